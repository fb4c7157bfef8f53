// The training data every gradserve example makes: y = 2x + 1 + 0.1·noise, from a seeded PRNG
// that the C++ client and tests/test_other_languages.py implement bit for bit the same.
'use strict';

// mulberry32: 32-bit state, uniform floats in [0, 1).
function mulberry32(seed) {
  let state = seed >>> 0;
  return function next() {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// `count` samples as float32 x in [0, 1) and y = 2x + 1 + 0.1·N(0, 1) (Box-Muller).
function makeData(seed, count = 100) {
  const random = mulberry32(seed);
  const x = new Float32Array(count);
  const y = new Float32Array(count);
  for (let i = 0; i < count; i += 1) x[i] = random();
  for (let i = 0; i < count; i += 1) {
    const u1 = 1 - random();
    const u2 = random();
    const noise = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    y[i] = 2 * x[i] + 1 + 0.1 * noise;
  }
  return { x, y };
}

// The (w, b) minimising the mean squared error over all samples: what training should reach.
function leastSquares(x, y) {
  const n = x.length;
  let sx = 0;
  let sy = 0;
  for (let i = 0; i < n; i += 1) {
    sx += x[i];
    sy += y[i];
  }
  const mx = sx / n;
  const my = sy / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i += 1) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
  }
  const w = sxy / sxx;
  return { w, b: my - w * mx };
}

module.exports = { mulberry32, makeData, leastSquares };
