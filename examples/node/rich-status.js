// Reads the google.rpc.Status that gradserve puts in the `grpc-status-details-bin` trailer and
// the google.rpc.BadRequest field violations packed in it. The three messages are declared here
// by hand (the few fields we read, same numbers as googleapis' google/rpc protos), so no
// googleapis checkout is needed.
'use strict';

const protobuf = require('protobufjs');

const root = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});

const Status = root.lookupType('google.rpc.Status');
const BadRequest = root.lookupType('google.rpc.BadRequest');
const BAD_REQUEST_URL = 'type.googleapis.com/google.rpc.BadRequest';

// [{ field, description }] from a @grpc/grpc-js ServiceError; [] when the status has none.
function fieldViolations(error) {
  const raw = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!raw.length) return [];
  const status = Status.toObject(Status.decode(raw[0]), { defaults: true });
  return status.details
    .filter((any) => any.type_url === BAD_REQUEST_URL)
    .flatMap((any) => BadRequest.toObject(BadRequest.decode(any.value), { defaults: true }).field_violations);
}

module.exports = { fieldViolations };
