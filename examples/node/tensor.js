// Where JavaScript values become gradserve.v1.Tensor fields and back (docs/protocol.md, "Tensors").
// Row-major, no padding, every element fixed-width little-endian whatever the host's order.
'use strict';

// itemsize and how one element is written into / read from a DataView at a byte offset.
const TYPES = {
  DATA_TYPE_FLOAT32: { size: 4, put: (v, o, x) => v.setFloat32(o, x, true), get: (v, o) => v.getFloat32(o, true) },
  DATA_TYPE_FLOAT64: { size: 8, put: (v, o, x) => v.setFloat64(o, x, true), get: (v, o) => v.getFloat64(o, true) },
  DATA_TYPE_FLOAT16: { size: 2, put: (v, o, x) => v.setUint16(o, float32ToHalfBits(x), true), get: (v, o) => halfBitsToNumber(v.getUint16(o, true)) },
  DATA_TYPE_BFLOAT16: { size: 2, put: (v, o, x) => v.setUint16(o, float32ToBfloat16Bits(x), true), get: (v, o) => bfloat16BitsToNumber(v.getUint16(o, true)) },
  DATA_TYPE_INT64: { size: 8, put: (v, o, x) => v.setBigInt64(o, BigInt(x), true), get: (v, o) => v.getBigInt64(o, true) },
  DATA_TYPE_INT32: { size: 4, put: (v, o, x) => v.setInt32(o, x, true), get: (v, o) => v.getInt32(o, true) },
  DATA_TYPE_INT16: { size: 2, put: (v, o, x) => v.setInt16(o, x, true), get: (v, o) => v.getInt16(o, true) },
  DATA_TYPE_INT8: { size: 1, put: (v, o, x) => v.setInt8(o, x), get: (v, o) => v.getInt8(o) },
  DATA_TYPE_UINT8: { size: 1, put: (v, o, x) => v.setUint8(o, x), get: (v, o) => v.getUint8(o) },
  // Exactly 0x00 or 0x01: the server rejects any other byte.
  DATA_TYPE_BOOL: { size: 1, put: (v, o, x) => v.setUint8(o, x ? 1 : 0), get: (v, o) => v.getUint8(o) === 1 },
};

const scratch = new DataView(new ArrayBuffer(4));

function float32Bits(x) {
  scratch.setFloat32(0, x, true);
  return scratch.getUint32(0, true);
}

// bfloat16 is the upper half of the float32, rounded to nearest even (as torch does).
function float32ToBfloat16Bits(x) {
  const bits = float32Bits(x);
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x0040; // NaN stays NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

function bfloat16BitsToNumber(bits) {
  scratch.setUint32(0, bits << 16, true);
  return scratch.getFloat32(0, true);
}

// IEEE-754 binary16, round to nearest even (Node 20 has no Float16Array).
function float32ToHalfBits(x) {
  const bits = float32Bits(x);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && (half & 1))) half += 1;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (half & 1))) half += 1; // may carry into the exponent: correct
  return sign | half;
}

function halfBitsToNumber(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

function elementCount(shape) {
  return shape.reduce((count, dim) => count * Number(dim), 1);
}

// A gradserve.v1.Tensor as @grpc/proto-loader (and protobufjs) take it. `values` is any
// array-like of numbers (BigInts or numbers for INT64, booleans for BOOL) in row-major order.
function encodeTensor(values, shape, dtype = 'DATA_TYPE_FLOAT32', name = '') {
  const type = TYPES[dtype];
  if (!type) throw new TypeError(`unknown dtype ${dtype}`);
  const count = elementCount(shape);
  if (values.length !== count) {
    throw new RangeError(`${values.length} values for shape [${shape}] (${count} elements)`);
  }
  const data = Buffer.alloc(count * type.size);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i < count; i += 1) type.put(view, i * type.size, values[i]);
  return { name, dtype, shape: shape.map(Number), data };
}

// { name, dtype, shape, values } from a received Tensor; checks the byte count.
function decodeTensor(tensor) {
  const type = TYPES[tensor.dtype];
  if (!type) throw new TypeError(`unknown dtype ${tensor.dtype}`);
  const shape = tensor.shape.map(Number);
  const count = elementCount(shape);
  const data = tensor.data;
  if (data.length !== count * type.size) {
    throw new RangeError(`${data.length} bytes for ${count} elements of ${tensor.dtype}`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const values = [];
  for (let i = 0; i < count; i += 1) values.push(type.get(view, i * type.size));
  return { name: tensor.name, dtype: tensor.dtype, shape, values };
}

module.exports = { encodeTensor, decodeTensor, DTYPES: Object.keys(TYPES) };
