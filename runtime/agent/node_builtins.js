// Builtins of later Node.js releases that code written for them (and models' code) uses
// without a second thought, for the image's Node 18: on it, `arr.toSorted()` failed with
// "arr.toSorted is not a function". Each is defined only where Node lacks it, as the
// language defines it (a method of the prototype, not enumerable, with its `name` and
// `length`; the same errors of the same kinds), so that Node's own takes over wherever it
// has one:
//
// - ES2023, Node 20: Array's and typed arrays' `toSorted`, `toReversed`, `with`, Array's
//   `toSpliced` (copies, where `sort`, `reverse` and `splice` change the array), and
//   String's `isWellFormed` and `toWellFormed`;
// - ES2024, Node 21 and 22: `Object.groupBy`, `Map.groupBy` and `Promise.withResolvers`.
//
// They run on the builtins as this file found them (as the language's own do): a cell that
// replaces `Array.prototype.sort` or `Map.prototype.set` does not change what they do.
// Every node a sandbox runs installs them first (node_preload.js, which the agent's
// NODE_OPTIONS requires), the worker too (`install()`; not a `vm` context a cell makes);
// tests compare them with Node's own.
'use strict';

const uncurry = (fn) => Function.prototype.call.bind(fn);
const ArrayPrototypeSort = uncurry(Array.prototype.sort);
const MapPrototypeGet = uncurry(Map.prototype.get);
const MapPrototypeSet = uncurry(Map.prototype.set);
const RegExpPrototypeTest = uncurry(RegExp.prototype.test);
const RegExpPrototypeReplace = uncurry(RegExp.prototype[Symbol.replace]);
const ObjectDefineProperty = Object.defineProperty;
const ObjectHasOwn = Object.hasOwn;
const ObjectKeys = Object.keys;
const ReflectOwnKeys = Reflect.ownKeys;
const MathMax = Math.max;
const MathMin = Math.min;
const MathTrunc = Math.trunc;
const NumberIsNaN = Number.isNaN;
const BigIntAsUintN = BigInt.asUintN;
const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

// ToIntegerOrInfinity: `+value` is ToNumber, which throws for a BigInt and a Symbol (where
// `Number()` converts a BigInt).
function toIntegerOrInfinity(value) {
  const number = +value;
  if (NumberIsNaN(number) || number === 0) return 0;
  if (number === Infinity || number === -Infinity) return number;
  return MathTrunc(number);
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
  return length <= 0 ? 0 : MathMin(length, MAX_SAFE_INTEGER);
}

// A relative index (`-1` is the last) made absolute, clamped to [0, length].
function clampIndex(relative, length) {
  const index = toIntegerOrInfinity(relative);
  if (index < 0) return index === -Infinity ? 0 : MathMax(length + index, 0);
  return MathMin(index, length);
}

function checkComparator(comparefn) {
  if (comparefn !== undefined && typeof comparefn !== 'function') {
    throw new TypeError('The comparison function must be either a function or undefined');
  }
}

const arrayMethods = {
  toSorted(comparefn) {
    checkComparator(comparefn);
    const object = toObject(this, 'Array.prototype.toSorted');
    const length = lengthOf(object);
    const copy = new Array(length);  // a RangeError past 2 ** 32 - 1, as the language's
    for (let k = 0; k < length; k++) copy[k] = object[k];  // holes read as undefined
    return ArrayPrototypeSort(copy, comparefn);
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
    else skip = MathMin(MathMax(toIntegerOrInfinity(skipCount), 0), length - actualStart);
    const newLength = length + items.length - skip;
    if (newLength > MAX_SAFE_INTEGER) throw new TypeError('Invalid array length');
    const copy = new Array(newLength);
    let i = 0;
    for (let k = 0; k < actualStart; k++) copy[i++] = object[k];
    for (let k = 0; k < items.length; k++) copy[i++] = items[k];
    for (let k = actualStart + skip; k < length; k++) copy[i++] = object[k];
    return copy;
  },
};

const TypedArray = Object.getPrototypeOf(Int8Array);
const TypedArrayPrototypeSort = uncurry(TypedArray.prototype.sort);
const TypedArrayPrototypeReverse = uncurry(TypedArray.prototype.reverse);
const TypedArrayPrototypeAt = uncurry(TypedArray.prototype.at);
const typedArrayLength = uncurry(
  Object.getOwnPropertyDescriptor(TypedArray.prototype, 'length').get);
const typedArrayTag = uncurry(
  Object.getOwnPropertyDescriptor(TypedArray.prototype, Symbol.toStringTag).get);
const typedArrayConstructors = {
  __proto__: null, Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array,
  Int32Array, Uint32Array, Float32Array, Float64Array, BigInt64Array, BigUint64Array,
};

// The name of a typed array's kind ("Int8Array"), which names its own constructor (never a
// subclass's or a `constructor` property's: the language's copies are of the kind itself),
// once it is known to be a typed array whose buffer is not detached (a TypeError, as the
// language's ValidateTypedArray gives: `at` validates it and nothing else before it).
function typedArrayKind(object) {
  const kind = typedArrayTag(object);
  if (kind === undefined) throw new TypeError('this is not a typed array.');
  TypedArrayPrototypeAt(object, 0);
  return kind;
}

function typedArrayCopy(object) {
  return new typedArrayConstructors[typedArrayKind(object)](object);
}

const typedArrayMethods = {
  toSorted(comparefn) {
    checkComparator(comparefn);
    return TypedArrayPrototypeSort(typedArrayCopy(this), comparefn);
  },
  toReversed() {
    return TypedArrayPrototypeReverse(typedArrayCopy(this));
  },
  with(index, value) {
    const kind = typedArrayKind(this);
    const length = typedArrayLength(this);
    const relative = toIntegerOrInfinity(index);
    const actual = relative >= 0 ? relative : length + relative;
    // ToBigInt (a number is a TypeError) or ToNumber (a BigInt is one), once; asUintN's
    // value wraps as the array's own store does.
    const number = kind[0] === 'B' ? BigIntAsUintN(64, value) : +value;
    if (actual >= typedArrayLength(this) || actual < 0) {
      throw new RangeError('Invalid typed array index');
    }
    const copy = new typedArrayConstructors[kind](this);
    copy[actual] = number;
    return copy;
  },
};

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const loneSurrogates = new RegExp(loneSurrogate.source, 'g');

// ToString of `this`: a TypeError for null and undefined, and for a Symbol (a template
// literal converts as ToString does, where `String()` names a Symbol).
function thisString(value, method) {
  if (value === null || value === undefined) {
    throw new TypeError(`String.prototype.${method} called on null or undefined`);
  }
  return `${value}`;
}

const stringMethods = {
  isWellFormed() {
    return !RegExpPrototypeTest(loneSurrogate, thisString(this, 'isWellFormed'));
  },
  toWellFormed() {
    return RegExpPrototypeReplace(loneSurrogates, thisString(this, 'toWellFormed'), '\uFFFD');
  },
};

function checkCallback(callback) {
  if (typeof callback !== 'function') throw new TypeError(`${String(callback)} is not a function`);
}

// Each of `items` (iterated as the language's `GroupBy` does: its own iterator, closed when
// the callback throws) with its group's key.
function forEachKeyed(items, callback, each) {
  if (items === null || items === undefined) {
    throw new TypeError(`${items} is not iterable`);
  }
  checkCallback(callback);
  let k = 0;
  for (const value of items) each(callback(value, k++), value);
}

const objectStatics = {
  groupBy(items, callback) {
    const groups = { __proto__: null };
    forEachKeyed(items, callback, (key, value) => {
      const property = ReflectOwnKeys({ [key]: 0 })[0];  // the key as a property's
      const group = ObjectHasOwn(groups, property) ? groups[property] : undefined;
      if (group === undefined) groups[property] = [value];
      else group[group.length] = value;
    });
    return groups;
  },
};

const mapStatics = {
  groupBy(items, callback) {
    const groups = new Map();
    forEachKeyed(items, callback, (key, value) => {
      const normal = key === 0 ? 0 : key;  // -0 is +0, as in a Map's keys
      const group = MapPrototypeGet(groups, normal);
      if (group === undefined) MapPrototypeSet(groups, normal, [value]);
      else group[group.length] = value;
    });
    return groups;
  },
};

const promiseStatics = {
  withResolvers() {
    // NewPromiseCapability(this): a constructor whose executor gets two functions, once.
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      if (resolve !== undefined || reject !== undefined) {
        throw new TypeError('Promise executor has already been invoked with non-undefined'
                            + ' arguments');
      }
      resolve = res;
      reject = rej;
    });
    if (typeof resolve !== 'function' || typeof reject !== 'function') {
      throw new TypeError('Promise resolve or reject function is not callable');
    }
    return { promise, resolve, reject };
  },
};

// Each method Node lacks, defined as the language's own are.
function define(target, methods) {
  const added = [];
  for (const name of ObjectKeys(methods)) {
    if (ObjectHasOwn(target, name)) continue;
    ObjectDefineProperty(target, name, {
      value: methods[name], writable: true, enumerable: false, configurable: true,
    });
    added[added.length] = name;
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
