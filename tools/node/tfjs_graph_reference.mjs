#!/usr/bin/env node
// Reference outputs of a TF.js graph model (model.json + weight shards) run by @tensorflow/tfjs,
// for agelens' converter fidelity tests (tests/models/convert/test_tfjs_graph.py).
//
// Usage:
//   node tfjs_graph_reference.mjs --model DIR/model.json --input x.f32 --output result.json
//        [--backend cpu|wasm]
//
// Input: raw little-endian float32 holding a batch for the model's single input, exactly as the
// graph receives it (no preprocessing here); the shape is the placeholder's, with the batch
// inferred from the file size.
// Output (JSON): {versions, backend, input_shape, outputs: {node_name: {shape, values}}} with one
// entry per signature output (node names without ':0'); float32 values as JSON doubles, which
// round-trip exactly.
// The weight shards are read from the model.json's folder, as tfjs' own loaders would.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs');

function fail(message) {
  process.stderr.write(`tfjs_graph_reference: ${message}\n`);
  process.exit(2);
}

function fileHandler(modelPath) {
  // A tf.io.IOHandler over local files: tfjs-core's own loader needs fetch or tfjs-node.
  return {
    async load() {
      const json = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
      const folder = path.dirname(modelPath);
      const weightSpecs = [];
      const buffers = [];
      for (const group of json.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(folder, shard)));
      }
      const joined = Buffer.concat(buffers);
      const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.length);
      return {
        modelTopology: json.modelTopology,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy,
        signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata,
        weightSpecs,
        weightData,
      };
    },
  };
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      model: { type: 'string' },
      input: { type: 'string' },
      output: { type: 'string' },
      backend: { type: 'string', default: 'cpu' },
    },
  });
  if (!args.model || !args.input || !args.output) fail('--model, --input and --output are required');
  if (!['cpu', 'wasm'].includes(args.backend)) fail('--backend must be cpu or wasm');
  if (args.backend === 'wasm') require('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend(args.backend))) fail(`could not initialise tfjs backend ${args.backend}`);
  await tf.ready();

  const model = await tf.loadGraphModel(fileHandler(args.model));
  const [input] = model.inputs;
  const perItem = input.shape.slice(1).reduce((a, b) => a * b, 1);
  const bytes = fs.readFileSync(args.input);
  if (bytes.length === 0 || bytes.length % (perItem * 4) !== 0) {
    fail(`${args.input}: ${bytes.length} bytes is not a whole batch of [${input.shape.slice(1)}] float32`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const data = new Float32Array(bytes.length / 4);
  for (let i = 0; i < data.length; i += 1) data[i] = view.getFloat32(i * 4, true);
  const shape = [data.length / perItem, ...input.shape.slice(1)];
  const x = tf.tensor(data, shape, 'float32');

  const names = model.outputs.map((o) => o.name.split(':')[0]);
  const results = model.execute(x, names);
  const outputs = {};
  for (let i = 0; i < names.length; i += 1) {
    outputs[names[i]] = { shape: results[i].shape, values: Array.from(await results[i].data()) };
  }
  tf.dispose([x, ...results]);
  const result = { versions: { tfjs: tf.version_core }, backend: tf.getBackend(), input_shape: shape, outputs };
  fs.writeFileSync(args.output, `${JSON.stringify(result)}\n`);
}

main().catch((error) => fail(error?.stack ?? String(error)));
