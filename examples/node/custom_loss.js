#!/usr/bin/env node
// A loss the client computes itself (docs/losses.md): ComputeOutputs answers the model's
// outputs and a handle of that forward pass; this client computes the mean squared error and
// its gradient dL/d(outputs) = 2 (outputs - y) / N in JavaScript, and BackwardOutputs has the
// server backpropagate it into .grad. Full-batch steps fit y = 2x + 1 to its least-squares line.
// Then it shows that a handle is used up: sending it again is FAILED_PRECONDITION on `handle`.
//
//   node custom_loss.js [--address 127.0.0.1:50051] [--lr 0.5] [--steps 400] [--seed 1]
'use strict';

const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { encodeTensor, decodeTensor } = require('./tensor');
const { makeData, leastSquares } = require('./data');
const { fieldViolations } = require('./rich-status');

const PROTO_DIR = process.env.GRADSERVE_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');
const DEADLINE_MS = 10000;

function loadService(address) {
  const definition = protoLoader.loadSync('gradserve/v1/gradserve.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
  });
  const { GradientService } = grpc.loadPackageDefinition(definition).gradserve.v1;
  return new GradientService(address, grpc.credentials.createInsecure());
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, new grpc.Metadata(), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// The mean squared error of the outputs and its gradient with respect to them.
function meanSquaredError(outputs, targets) {
  const n = outputs.length;
  const gradient = new Float32Array(n);
  let loss = 0;
  for (let i = 0; i < n; i += 1) {
    const error = outputs[i] - targets[i];
    loss += error * error;
    gradient[i] = (2 * error) / n;
  }
  return { loss: loss / n, gradient };
}

async function step(client, inputs, y, learningRate) {
  const forward = await call(client, 'ComputeOutputs', { inputs });
  const outputs = decodeTensor(forward.outputs).values;
  const { loss, gradient } = meanSquaredError(outputs, y);
  await call(client, 'BackwardOutputs', {
    handle: forward.handle,
    output_gradients: encodeTensor(gradient, [y.length, 1]),
    loss,
  });
  await call(client, 'ApplyUpdate', { learning_rate: learningRate });
  return { loss, handle: forward.handle, gradient };
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.GRADSERVE_ADDRESS || '127.0.0.1:50051' },
      lr: { type: 'string', default: '0.5' },
      steps: { type: 'string', default: '400' },
      seed: { type: 'string', default: '1' },
    },
  });
  const client = loadService(args.address);
  try {
    const { x, y } = makeData(Number.parseInt(args.seed, 10));
    const fit = leastSquares(x, y);
    console.log(`Least squares: w=${fit.w.toFixed(6)} b=${fit.b.toFixed(6)}`);
    const inputs = encodeTensor(x, [x.length, 1]);
    let last;
    const steps = Number.parseInt(args.steps, 10);
    for (let index = 1; index <= steps; index += 1) {
      last = await step(client, inputs, y, Number(args.lr));
      if (index % 100 === 0) console.log(`Step ${index}, Loss: ${last.loss.toFixed(6)}`);
    }
    const response = await call(client, 'GetParameters', { names: [] });
    const values = {};
    for (const tensor of response.parameters) values[tensor.name] = decodeTensor(tensor).values[0];
    console.log(`Final: w=${values.w.toFixed(6)} b=${values.b.toFixed(6)}`);
    try {
      await call(client, 'BackwardOutputs', {
        handle: last.handle,
        output_gradients: encodeTensor(last.gradient, [y.length, 1]),
        loss: last.loss,
      });
      console.log('Used handle: unexpectedly accepted');
      return 1;
    } catch (error) {
      const fields = fieldViolations(error).map((violation) => violation.field);
      console.log(`Used handle: status=${grpc.status[error.code]} field=${fields.join(',')}`);
      return error.code === grpc.status.FAILED_PRECONDITION ? 0 : 1;
    }
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`custom_loss failed: ${error.details || error.message}`);
    process.exit(1);
  },
);
