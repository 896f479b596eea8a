#!/usr/bin/env node
// Reference outputs of face-api's own AgeGenderNet, for agelens' fidelity tests.
//
// Usage:
//   node faceapi_reference.mjs --input faces.f32 --output result.json
//        [--height 112] [--width 112] [--backend cpu|wasm] [--model-dir DIR]
//
// Input: raw little-endian float32, shape [N, height, width, 3], RGB pixel values in 0..255
// (not normalised: face-api subtracts its mean and divides by 255 itself). N is inferred from the
// file size. Each face becomes one tf.Tensor3D and the batch goes through face-api's own path:
// toNetInput -> NetInput.toBatchTensor(112, true) (pad to square, centred; bilinear resize when
// not already 112x112) -> TinyXception -> AgeGenderNet heads.
//
// Output (JSON):
//   age                   [N]       AgeGenderNet.forwardInput().age, years
//   gender_probabilities  [N, 2]    AgeGenderNet.forwardInput().gender (softmax; 0 male, 1 female)
//   embedding             [N, 512]  tf.avgPool(faceFeatureExtractor.forwardInput(), [7, 7], [2, 2],
//                                   'valid') reshaped to 2D: the feature runNet feeds both heads
//   predictions           [N]       predictAgeAndGender(): {age, gender, genderProbability}
//   heads_from_embedding_max_abs_diff  runNet on the bottleneck vs forwardInput (sanity, ~0)
//   versions, backend, input_shape, timings_ms
//
// Numbers are float32 values written as JSON doubles, which round-trip exactly.
// Model files default to this package's node_modules/@vladmandic/face-api/model.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
// The package's `main` (face-api.node.js) needs @tensorflow/tfjs-node, whose install downloads a
// native binary; the node-wasm bundle is the same face-api code on @tensorflow/tfjs, which also
// registers the pure-JS cpu backend.
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const faceapiPackage = require('@vladmandic/face-api/package.json');

const { tf } = faceapi;

function fail(message) {
  process.stderr.write(`faceapi_reference: ${message}\n`);
  process.exit(2);
}

function parseCli() {
  const { values } = parseArgs({
    options: {
      input: { type: 'string' },
      output: { type: 'string' },
      height: { type: 'string', default: '112' },
      width: { type: 'string', default: '112' },
      backend: { type: 'string', default: 'cpu' },
      'model-dir': { type: 'string' },
    },
  });
  if (!values.input || !values.output) fail('--input and --output are required');
  const height = Number.parseInt(values.height, 10);
  const width = Number.parseInt(values.width, 10);
  if (!(height > 0 && width > 0)) fail('--height and --width must be positive integers');
  if (!['cpu', 'wasm'].includes(values.backend)) fail('--backend must be cpu or wasm');
  const modelDir = values['model-dir']
    ?? path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
  return { ...values, height, width, modelDir };
}

function readFaces(file, height, width) {
  const bytes = fs.readFileSync(file);
  const faceBytes = height * width * 3 * 4;
  if (bytes.length === 0 || bytes.length % faceBytes !== 0) {
    fail(`${file}: ${bytes.length} bytes is not a whole number of float32 [${height}, ${width}, 3] faces`);
  }
  // Copy into an aligned buffer; DataView makes the little-endian layout explicit.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const values = new Float32Array(bytes.length / 4);
  for (let i = 0; i < values.length; i += 1) values[i] = view.getFloat32(i * 4, true);
  const count = bytes.length / faceBytes;
  const size = height * width * 3;
  const faces = [];
  for (let i = 0; i < count; i += 1) {
    faces.push(tf.tensor3d(values.subarray(i * size, (i + 1) * size), [height, width, 3], 'float32'));
  }
  return faces;
}

function maxAbsDiff(a, b) {
  let worst = 0;
  for (let i = 0; i < a.length; i += 1) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

async function main() {
  const args = parseCli();
  const t0 = performance.now();
  if (args.backend === 'wasm') require('@tensorflow/tfjs-backend-wasm'); // registers 'wasm'
  if (!(await tf.setBackend(args.backend))) fail(`could not initialise tfjs backend ${args.backend}`);
  await tf.ready();

  const net = faceapi.nets.ageGenderNet;
  await net.loadFromDisk(args.modelDir);
  const t1 = performance.now();

  const faces = readFaces(args.input, args.height, args.width);
  const count = faces.length;
  const netInput = await faceapi.toNetInput(faces);

  // face-api's forward pass: normalisation, TinyXception, both heads, softmax.
  const out = net.forwardInput(netInput);
  const age = Array.from(await out.age.data());
  const genderFlat = await out.gender.data();
  const genderProbabilities = [];
  for (let i = 0; i < count; i += 1) genderProbabilities.push(Array.from(genderFlat.subarray(2 * i, 2 * i + 2)));

  // The embedding is internal to AgeGenderNet.runNet; rebuild it from face-api's backbone with
  // the very op runNet applies, then check the heads applied to it (runNet accepts bottleneck
  // features) reproduce the outputs above.
  const bottleneck = net.faceFeatureExtractor.forwardInput(netInput);
  const pooled = tf.tidy(() => tf.avgPool(bottleneck, [7, 7], [2, 2], 'valid').as2D(count, -1));
  const pooledFlat = await pooled.data();
  const embedding = [];
  const width = pooled.shape[1];
  for (let i = 0; i < count; i += 1) embedding.push(Array.from(pooledFlat.subarray(width * i, width * (i + 1))));
  const fromBottleneck = net.forwardInput(bottleneck);
  const headsDiff = Math.max(
    maxAbsDiff(await fromBottleneck.age.data(), age),
    maxAbsDiff(await fromBottleneck.gender.data(), genderFlat),
  );
  const t2 = performance.now();

  // The public API path, as face-api's withAgeAndGender() calls it.
  const predictions = await net.predictAgeAndGender(faces);
  const t3 = performance.now();

  tf.dispose([out.age, out.gender, bottleneck, pooled, fromBottleneck.age, fromBottleneck.gender, ...faces]);

  const result = {
    versions: { 'face-api': faceapiPackage.version, tfjs: tf.version_core },
    backend: tf.getBackend(),
    input_shape: [count, args.height, args.width, 3],
    age,
    gender_probabilities: genderProbabilities,
    gender_labels: ['male', 'female'],
    embedding,
    predictions: Array.isArray(predictions) ? predictions : [predictions],
    heads_from_embedding_max_abs_diff: headsDiff,
    timings_ms: { load: t1 - t0, forward: t2 - t1, predict: t3 - t2 },
  };
  fs.writeFileSync(args.output, `${JSON.stringify(result)}\n`);
}

main().catch((error) => fail(error?.stack ?? String(error)));
