#!/usr/bin/env node
// Prints {"name": base64 of a serialized gradserve.v1.Tensor} for known values of every dtype,
// encoded by tensor.js; tests/test_other_languages.py decodes them with the Python codec.
'use strict';

const path = require('path');
const protobuf = require('protobufjs');
const { encodeTensor } = require('./tensor');

const PROTO_DIR = process.env.GRADSERVE_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');

// The same values are spelled out in tests/test_other_languages.py.
const FIXTURES = {
  float32: [[1.5, -2.25, 0.1, Infinity, -0, 1e-45], [2, 3], 'DATA_TYPE_FLOAT32'],
  float64: [[0.1, -1e300, 5e-324, -Infinity], [4], 'DATA_TYPE_FLOAT64'],
  float16: [[1, -2.5, 65504, 2 ** -24, 0.1, -0], [3, 2], 'DATA_TYPE_FLOAT16'],
  bfloat16: [[1, -2, 3.140625, 0.1, 1e30, -0], [6], 'DATA_TYPE_BFLOAT16'],
  int64: [[0n, -1n, 9007199254740993n, -9223372036854775808n, 9223372036854775807n], [5], 'DATA_TYPE_INT64'],
  int32: [[-2147483648, 2147483647, 7, -7], [2, 2], 'DATA_TYPE_INT32'],
  int16: [[-32768, 32767, 1], [3], 'DATA_TYPE_INT16'],
  int8: [[-128, 127, 0], [3], 'DATA_TYPE_INT8'],
  uint8: [[0, 255, 128], [3], 'DATA_TYPE_UINT8'],
  bool: [[true, false, true, true], [2, 1, 2], 'DATA_TYPE_BOOL'],
  scalar_float32: [[42.5], [], 'DATA_TYPE_FLOAT32'],
  empty_float32: [[], [0, 3], 'DATA_TYPE_FLOAT32'],
};

function main() {
  const root = protobuf.loadSync(path.join(PROTO_DIR, 'gradserve', 'v1', 'gradserve.proto'));
  const Tensor = root.lookupType('gradserve.v1.Tensor');
  const out = {};
  for (const [name, [values, shape, dtype]] of Object.entries(FIXTURES)) {
    const tensor = encodeTensor(values, shape, dtype, name);
    const message = Tensor.fromObject(tensor); // enum names and Buffers are both accepted
    out[name] = Buffer.from(Tensor.encode(message).finish()).toString('base64');
  }
  console.log(JSON.stringify(out));
}

main();
