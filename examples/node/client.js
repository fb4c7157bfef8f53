#!/usr/bin/env node
// A gradserve.v1 client written from proto/ and docs/protocol.md alone: creates its own training
// run (CreateRun, a linear model), fits y = 2x + 1 in it by sending batches to ComputeGradients
// and stepping with ApplyUpdate, then makes one malformed call on purpose to show what an error
// looks like.
//
//   node client.js [--address 127.0.0.1:50051] [--run NAME] [--lr 0.01] [--epochs 100] [--seed 1]
//
// Every request names the run in its `run` field and in the `gradserve-run` metadata, which lets
// a proxy place runs on server replicas without reading bodies (docs/scaling.md). Without --run
// the name is made here (node-<random hex>), so the proxy can place the CreateRun too.
//
// A server started with tokens wants `authorization: Bearer <token>` on every call: set
// GRADSERVE_TOKEN.
'use strict';

const crypto = require('crypto');
const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { encodeTensor, decodeTensor } = require('./tensor');
const { makeData, leastSquares } = require('./data');
const { fieldViolations } = require('./rich-status');

const PROTO_DIR = process.env.GRADSERVE_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');
const BATCH_SIZE = 10;
const DEADLINE_MS = 10000;
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024; // the server's default, in both directions
const RUN_METADATA = 'gradserve-run';

function loadService(address) {
  const definition = protoLoader.loadSync('gradserve/v1/gradserve.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true, // field names exactly as in the proto
    longs: Number, // int64 counters and shapes fit a double here
    enums: String,
    defaults: true,
  });
  const { GradientService } = grpc.loadPackageDefinition(definition).gradserve.v1;
  return new GradientService(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
}

const TOKEN = process.env.GRADSERVE_TOKEN || '';

// One unary call on `run` as a promise, always with a deadline: the run goes into the request
// and into the gradserve-run metadata (with the bearer token, when there is one).
function call(client, method, run, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    const metadata = new grpc.Metadata();
    if (TOKEN) metadata.set('authorization', `Bearer ${TOKEN}`);
    metadata.set(RUN_METADATA, run);
    client[method]({ ...request, run }, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function fmt(value) {
  return value.toFixed(6);
}

async function readParameters(client, run) {
  const response = await call(client, 'GetParameters', run, { names: [] });
  const values = {};
  for (const tensor of response.parameters) values[tensor.name] = decodeTensor(tensor).values[0];
  return { w: values.w, b: values.b, version: response.model_version };
}

async function train(client, run, x, y, learningRate, epochs) {
  for (let epoch = 1; epoch <= epochs; epoch += 1) {
    let lossSum = 0;
    let batches = 0;
    for (let start = 0; start < x.length; start += BATCH_SIZE) {
      const rows = Math.min(BATCH_SIZE, x.length - start);
      const inputs = encodeTensor(x.subarray(start, start + rows), [rows, 1]);
      const targets = encodeTensor(y.subarray(start, start + rows), [rows, 1]);
      const result = await call(client, 'ComputeGradients', run, { inputs, targets });
      await call(client, 'ApplyUpdate', run, { learning_rate: learningRate });
      lossSum += result.loss;
      batches += 1;
    }
    if (epoch % 10 === 0) console.log(`Epoch ${epoch}, Loss: ${(lossSum / batches).toFixed(4)}`);
  }
}

// Four bytes short of the [2, 1] float32 shape it claims: the server must refuse it.
async function showMalformedCall(client, run) {
  const inputs = encodeTensor([1, 2], [2, 1]);
  inputs.data = inputs.data.subarray(0, 4);
  const targets = encodeTensor([3, 5], [2, 1]);
  try {
    await call(client, 'ComputeGradients', run, { inputs, targets });
    console.log('Malformed call: unexpectedly accepted');
    return false;
  } catch (error) {
    console.log(`Malformed call: status=${grpc.status[error.code]} code=${error.code}: ${error.details}`);
    for (const violation of fieldViolations(error)) {
      console.log(`Field violation: field=${violation.field} description=${violation.description}`);
    }
    return error.code === grpc.status.INVALID_ARGUMENT;
  }
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.GRADSERVE_ADDRESS || '127.0.0.1:50051' },
      run: { type: 'string', default: process.env.GRADSERVE_RUN || '' },
      lr: { type: 'string', default: '0.01' },
      epochs: { type: 'string', default: '100' },
      seed: { type: 'string', default: '1' },
    },
  });
  const learningRate = Number(args.lr);
  const epochs = Number.parseInt(args.epochs, 10);
  const client = loadService(args.address);
  try {
    const name = args.run || `node-${crypto.randomBytes(4).toString('hex')}`;
    const { run, info } = await call(client, 'CreateRun', name, { model: 'linear' });
    console.log(`Run: ${run}, model ${info.model_spec}, optimizer ${info.optimizer}, version ${info.model_version}`);
    const { x, y } = makeData(Number.parseInt(args.seed, 10));
    const fit = leastSquares(x, y);
    console.log(`Least squares: w=${fmt(fit.w)} b=${fmt(fit.b)}`);

    await train(client, run, x, y, learningRate, epochs);
    const final = await readParameters(client, run);
    console.log(`Final: w=${fmt(final.w)} b=${fmt(final.b)}`);
    console.log(`GetParameters: w=${fmt(final.w)} b=${fmt(final.b)} version=${final.version}`);

    const rejected = await showMalformedCall(client, run);
    return rejected ? 0 : 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`gradserve client failed: ${error.code !== undefined ? `${grpc.status[error.code]}: ` : ''}${error.details || error.message}`);
    process.exit(1);
  },
);
