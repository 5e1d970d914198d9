// Builtins of later Node.js releases that code written for them (and models' code) uses
// without a second thought, for the image's Node 18: on it, `arr.toSorted()` failed with
// "arr.toSorted is not a function". Each is defined only where Node lacks it, as the
// language defines it (a method of the prototype, not enumerable, with its `name` and
// `length`), so that Node's own takes over wherever it has one:
//
// - ES2023, Node 20: Array's and typed arrays' `toSorted`, `toReversed`, `with`, Array's
//   `toSpliced` (copies, where `sort`, `reverse` and `splice` change the array), and
//   String's `isWellFormed` and `toWellFormed`;
// - ES2024, Node 21 and 22: `Object.groupBy`, `Map.groupBy` and `Promise.withResolvers`.
//
// The worker installs them at its start (`install()`); tests compare them with Node's own.
'use strict';

const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

function toIntegerOrInfinity(value) {
  const number = Number(value);
  if (Number.isNaN(number) || number === 0) return 0;
  if (!Number.isFinite(number)) return number;
  return Math.trunc(number);
}

// `this` as an object: a TypeError for null and undefined, as the language's methods give.
function toObject(value, method) {
  if (value === null || value === undefined) {
    throw new TypeError(`${method} called on null or undefined`);
  }
  return Object(value);
}

function lengthOf(object) {
  const length = toIntegerOrInfinity(object.length);
  return length <= 0 ? 0 : Math.min(length, MAX_SAFE_INTEGER);
}

// A relative index (`-1` is the last) made absolute, clamped to [0, length].
function clampIndex(relative, length) {
  const index = toIntegerOrInfinity(relative);
  if (index < 0) return index === -Infinity ? 0 : Math.max(length + index, 0);
  return Math.min(index, length);
}

function checkComparator(comparefn) {
  if (comparefn !== undefined && typeof comparefn !== 'function') {
    throw new TypeError('The comparison function must be either a function or undefined');
  }
}

// A dense copy of an array-like's first `length` elements (holes read as `undefined`).
function denseCopy(object, length) {
  const copy = new Array(length);  // a RangeError past 2 ** 32 - 1, as the language's
  for (let k = 0; k < length; k++) copy[k] = object[k];
  return copy;
}

const arrayMethods = {
  toSorted(comparefn) {
    checkComparator(comparefn);
    const object = toObject(this, 'Array.prototype.toSorted');
    return denseCopy(object, lengthOf(object)).sort(comparefn);
  },
  toReversed() {
    const object = toObject(this, 'Array.prototype.toReversed');
    const length = lengthOf(object);
    const copy = new Array(length);
    for (let k = 0; k < length; k++) copy[k] = object[length - 1 - k];
    return copy;
  },
  with(index, value) {
    const object = toObject(this, 'Array.prototype.with');
    const length = lengthOf(object);
    const relative = toIntegerOrInfinity(index);
    const actual = relative >= 0 ? relative : length + relative;
    if (actual >= length || actual < 0) throw new RangeError(`Invalid index : ${relative}`);
    const copy = new Array(length);
    for (let k = 0; k < length; k++) copy[k] = k === actual ? value : object[k];
    return copy;
  },
  toSpliced(start, skipCount, ...items) {
    const object = toObject(this, 'Array.prototype.toSpliced');
    const length = lengthOf(object);
    const actualStart = clampIndex(start, length);
    let skip;
    if (arguments.length === 0) skip = 0;
    else if (arguments.length === 1) skip = length - actualStart;
    else skip = Math.min(Math.max(toIntegerOrInfinity(skipCount), 0), length - actualStart);
    const newLength = length + items.length - skip;
    if (newLength > MAX_SAFE_INTEGER) throw new TypeError('Invalid array length');
    const copy = new Array(newLength);
    let i = 0;
    for (let k = 0; k < actualStart; k++) copy[i++] = object[k];
    for (const item of items) copy[i++] = item;
    for (let k = actualStart + skip; k < length; k++) copy[i++] = object[k];
    return copy;
  },
};

const TypedArray = Object.getPrototypeOf(Int8Array);
const typedArrayLength = Object.getOwnPropertyDescriptor(TypedArray.prototype, 'length').get;
const typedArrayTag = Object.getOwnPropertyDescriptor(
  TypedArray.prototype, Symbol.toStringTag).get;

const typedArrayConstructors = {
  Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
  Float32Array, Float64Array, BigInt64Array, BigUint64Array,
};

// The name of a typed array's kind ("Int8Array"), which names its own constructor (never a
// subclass's or a `constructor` property's: the language's copies are of the kind itself).
function typedArrayKind(object) {
  const kind = typedArrayTag.call(object);
  if (kind === undefined) throw new TypeError('this is not a typed array.');
  return kind;
}

function typedArrayCopy(object) {
  return new typedArrayConstructors[typedArrayKind(object)](object);
}

const typedArrayMethods = {
  toSorted(comparefn) {
    checkComparator(comparefn);
    return TypedArray.prototype.sort.call(typedArrayCopy(this), comparefn);
  },
  toReversed() {
    return TypedArray.prototype.reverse.call(typedArrayCopy(this));
  },
  with(index, value) {
    const kind = typedArrayKind(this);
    const length = typedArrayLength.call(this);
    const relative = toIntegerOrInfinity(index);
    const actual = relative >= 0 ? relative : length + relative;
    // ToBigInt (a number is a TypeError) or ToNumber (a BigInt is one: `Number()` would
    // convert it), once; asUintN's value wraps as the array's own store does.
    const number = kind.startsWith('Big') ? BigInt.asUintN(64, value) : +value;
    if (actual >= typedArrayLength.call(this) || actual < 0) {
      throw new RangeError('Invalid typed array index');
    }
    const copy = new typedArrayConstructors[kind](this);
    copy[actual] = number;
    return copy;
  },
};

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const loneSurrogates = new RegExp(loneSurrogate.source, 'g');

function thisString(value, method) {
  if (value === null || value === undefined) {
    throw new TypeError(`String.prototype.${method} called on null or undefined`);
  }
  return String(value);
}

const stringMethods = {
  isWellFormed() {
    return !loneSurrogate.test(thisString(this, 'isWellFormed'));
  },
  toWellFormed() {
    return thisString(this, 'toWellFormed').replace(loneSurrogates, '\uFFFD');
  },
};

function checkCallback(callback) {
  if (typeof callback !== 'function') throw new TypeError(`${String(callback)} is not a function`);
}

function forEachIndexed(items, callback, each) {
  if (items === null || items === undefined) {
    throw new TypeError(`${items} is not iterable`);
  }
  checkCallback(callback);
  let k = 0;
  for (const value of items) each(callback(value, k++), value);
}

const objectStatics = {
  groupBy(items, callback) {
    const groups = Object.create(null);
    forEachIndexed(items, callback, (key, value) => {
      const property = Reflect.ownKeys({ [key]: 0 })[0];  // the key as a property's
      if (Object.prototype.hasOwnProperty.call(groups, property)) groups[property].push(value);
      else groups[property] = [value];
    });
    return groups;
  },
};

const mapStatics = {
  groupBy(items, callback) {
    const groups = new Map();
    forEachIndexed(items, callback, (key, value) => {
      const normal = key === 0 ? 0 : key;  // -0 is +0, as in a Map's keys
      const group = groups.get(normal);
      if (group === undefined) groups.set(normal, [value]);
      else group.push(value);
    });
    return groups;
  },
};

const promiseStatics = {
  withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  },
};

// Each method Node lacks, defined as the language's own are.
function define(target, methods) {
  const added = [];
  for (const name of Object.keys(methods)) {
    if (Object.prototype.hasOwnProperty.call(target, name)) continue;
    Object.defineProperty(target, name, {
      value: methods[name], writable: true, enumerable: false, configurable: true,
    });
    added.push(name);
  }
  return added;
}

function install() {
  const added = define(Array.prototype, arrayMethods);
  // Hidden from `with` statements, as the language's copies of an array are.
  const unscopables = Array.prototype[Symbol.unscopables];
  for (const name of added) if (name !== 'with') unscopables[name] = true;
  define(TypedArray.prototype, typedArrayMethods);
  define(String.prototype, stringMethods);
  define(Object, objectStatics);
  define(Map, mapStatics);
  define(Promise, promiseStatics);
}

module.exports = { install, arrayMethods, typedArrayMethods, stringMethods, objectStatics,
                   mapStatics, promiseStatics };
