#!/usr/bin/env node
// Sampling from Node.js (docs/sampling.md): one Sample call, a server-streaming RPC. Each
// response is one decoding step: the samples that drew a token, their tokens and
// log-probabilities, and the samples that ended. The tokens are printed as they arrive; at the
// end, one JSON line with every sample whole (tokens, log-probabilities, stop reason) and the
// model version they were drawn from. The run must be a token model (a transformers model or
// an adapter over one).
//
//   node sample.js --prompt 5,7,9 [--address 127.0.0.1:50051] [--run NAME] [--num-samples 2]
//                  [--max-tokens 8] [--temperature 1] [--top-k 0] [--seed 0] [--stop 2]
'use strict';

const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = process.env.GRADSERVE_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');
// One deadline for the whole stream.
const DEADLINE_MS = 60000;

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

function ids(text) {
  return text ? text.split(',').map((id) => Number.parseInt(id, 10)) : [];
}

// Resolves with every sample, whole, once the stream ends; prints each step as it arrives.
function sample(client, request) {
  return new Promise((resolve, reject) => {
    const samples = Array.from({ length: request.num_samples }, () => ({
      tokens: [],
      logprobs: [],
      stop: null,
    }));
    let version = 0;
    const metadata = new grpc.Metadata();
    if (request.run) metadata.set('gradserve-run', request.run);
    const deadline = new Date(Date.now() + DEADLINE_MS);
    const stream = client.Sample(request, metadata, { deadline });
    stream.on('data', (response) => {
      version = response.model_version;
      response.samples.forEach((index, i) => {
        samples[index].tokens.push(response.tokens[i]);
        samples[index].logprobs.push(response.logprobs[i]);
      });
      for (const stop of response.finished) samples[stop.sample].stop = stop.reason;
      const drawn = response.samples.map((index, i) => `${index}:${response.tokens[i]}`);
      console.log(`step ${response.step}: ${drawn.join(' ')}`);
    });
    stream.on('error', reject);
    stream.on('end', () => resolve({ model_version: version, samples }));
  });
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.GRADSERVE_ADDRESS || '127.0.0.1:50051' },
      run: { type: 'string', default: process.env.GRADSERVE_RUN || '' },
      prompt: { type: 'string' },
      'num-samples': { type: 'string', default: '2' },
      'max-tokens': { type: 'string', default: '8' },
      temperature: { type: 'string', default: '1' },
      'top-k': { type: 'string', default: '0' },
      seed: { type: 'string', default: '0' },
      stop: { type: 'string', default: '' },
    },
  });
  if (!args.prompt) throw new Error('--prompt IDS is required (token ids, comma-separated)');
  const client = loadService(args.address);
  try {
    const answer = await sample(client, {
      run: args.run,
      prompt_tokens: ids(args.prompt),
      num_samples: Number.parseInt(args['num-samples'], 10),
      max_tokens: Number.parseInt(args['max-tokens'], 10),
      temperature: Number(args.temperature),
      top_k: Number.parseInt(args['top-k'], 10),
      seed: Number.parseInt(args.seed, 10),
      stop_token_ids: ids(args.stop),
    });
    console.log(JSON.stringify(answer));
    return 0;
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`sample failed: ${grpc.status[error.code] || ''} ${error.details || error.message}`);
    process.exit(1);
  },
);
