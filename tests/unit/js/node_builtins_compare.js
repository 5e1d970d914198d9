// tests/unit/test_node_builtins.py: runtime/agent/node_builtins.js (argv[2]) against the
// host Node's own methods, call by call; prints what differs, and checks of the rest, as JSON.
'use strict';
const util = require('util');
const nb = require(process.argv[2]);
const out = { mismatches: [], compared: 0, checks: {} };

function show(thunk) {
  try {
    const value = thunk();
    const kind = value === null || typeof value !== 'object' ? typeof value
      : Object.getPrototypeOf(value) === null ? 'null-prototype'
      : value.constructor.name;
    return kind + ' ' + util.inspect(value, { depth: 4, sorted: true });
  } catch (e) {
    return 'throws ' + e.constructor.name;
  }
}

function compare(label, native, mine, receivers, argLists) {
  if (typeof native !== 'function') {
    out.mismatches.push(`${label}: the host's Node lacks it`);
    return;
  }
  for (const key of ['name', 'length']) {
    if (native[key] !== mine[key]) {
      out.mismatches.push(`${label}.${key}: ${native[key]} against ${mine[key]}`);
    }
  }
  for (const [name, make] of receivers) {
    for (const args of argLists) {
      const a = show(() => native.apply(make(), args));
      const b = show(() => mine.apply(make(), args));
      out.compared++;
      if (a !== b) {
        out.mismatches.push(
          `${label} on ${name} with ${util.inspect(args)}: ${a} against ${b}`);
      }
    }
  }
}

const hole = [3, , 1];  // eslint-disable-line no-sparse-arrays
const arrays = [
  ['numbers', () => [3, 1, 10, 2]],
  ['strings', () => ['b', 'a', 'C', 'b']],
  ['holes', () => hole.slice()],
  ['undefineds', () => [undefined, 2, undefined, 1]],
  ['empty', () => []],
  ['array-like', () => ({ length: 3, 0: 'b', 2: 'a' })],
  ['array-like, length "2"', () => ({ length: '2', 0: 'x', 1: 'y' })],
  ['array-like, negative length', () => ({ length: -1, 0: 'x' })],
  ['array-like, length 2**32', () => ({ length: 2 ** 32 })],
  ['array-like, length 2**53', () => ({ length: 2 ** 53 })],
  ['array-like, BigInt length', () => ({ length: 2n, 0: 'x' })],
  ['array-like, Symbol length', () => ({ length: Symbol('n') })],
  ['string', () => 'abc'],
  ['number', () => 5],
  ['null', () => null],
  ['undefined', () => undefined],
];
const proto = Array.prototype;
const small = arrays.filter(([n]) => !n.includes('2**'));
compare('toSorted', proto.toSorted, nb.arrayMethods.toSorted,
        small.concat([['array-like, length 2**32', () => ({ length: 2 ** 32 })]]),
        [[], [undefined], [(a, b) => (a < b ? 1 : a > b ? -1 : 0)], ['no'], [null], [{}]]);
compare('toReversed', proto.toReversed, nb.arrayMethods.toReversed, arrays, [[]]);
compare('with', proto.with, nb.arrayMethods.with,
        arrays.filter(([n]) => n !== 'array-like, length 2**53'),
        [[0, 'x'], [-1, 'x'], [3, 'x'], [4, 'x'], [-4, 'x'], [-5, 'x'], ['1', 'x'], [1.7, 'x'],
         [-0.5, 'x'], [NaN, 'x'], [Infinity, 'x'], [-Infinity, 'x'], [undefined, 'x'], [],
         [1n, 'x'], [Symbol('i'), 'x'], [{ valueOf: () => 1 }, 'x']]);
compare('toSpliced', proto.toSpliced, nb.arrayMethods.toSpliced, small,
        [[], [1], [1, 1], [1, 1, 'a', 'b'], [-1, 0, 'z'], [-10, 2], [10], [1, -5, 'q'],
         [1, Infinity], ['1', '1'], [undefined], [undefined, undefined], [NaN, NaN, 'n'],
         [0, 0, 'a', 'b', 'c'], [-Infinity, 1], [Infinity, 0, 'end'], [1n], [0, 1n]]);
compare('toSpliced', proto.toSpliced, nb.arrayMethods.toSpliced,
        [['array-like, length 2**53 - 1', () => ({ length: 2 ** 53 - 1 })]],
        [[0, 0, 'a'], [0, 2 ** 53]]);
compare('toSpliced', proto.toSpliced, nb.arrayMethods.toSpliced,
        [['array-like, length 2**32 - 1', () => ({ length: 2 ** 32 - 1 })]],
        [[0, 0, 'a']]);

class Mine extends Uint8Array {}
const typed = [
  ['Int8Array', () => Int8Array.of(3, 1, -2, 100)],
  ['Uint8ClampedArray', () => Uint8ClampedArray.of(200, 3, 255)],
  ['Float64Array', () => Float64Array.of(NaN, -0, 0, 1, -Infinity)],
  ['Float32Array', () => Float32Array.of(1.5, -2.25)],
  ['BigInt64Array', () => BigInt64Array.of(3n, -1n, 2n)],
  ['BigUint64Array', () => BigUint64Array.of(3n, 1n)],
  ['a subclass', () => Mine.of(2, 1)],
  ['an array', () => [2, 1]],
  ['detached', () => {
    const a = Uint8Array.of(2, 1);
    structuredClone(a.buffer, { transfer: [a.buffer] });
    return a;
  }],
  ['an object', () => ({ length: 1, 0: 1 })],
  ['null', () => null],
  ['empty', () => new Uint16Array(0)],
];
const TypedArray = Object.getPrototypeOf(Int8Array);
compare('%TypedArray%.toSorted', TypedArray.prototype.toSorted, nb.typedArrayMethods.toSorted,
        typed, [[], [(a, b) => (a < b ? 1 : a > b ? -1 : 0)], ['no']]);
compare('%TypedArray%.toReversed', TypedArray.prototype.toReversed,
        nb.typedArrayMethods.toReversed, typed, [[]]);
compare('%TypedArray%.with', TypedArray.prototype.with, nb.typedArrayMethods.with, typed,
        [[0, 7], [-1, 9], [0, 300], [0, -129], [1, '5'], [0, 5n], [0, '7'], [0, 1.9],
         [5, 1], [-6, 1], ['1', 4], [NaN, 4], [0, {}], [0, true], [0], [0n, 1], [5, 5n],
         [Symbol('i'), 1]]);

const strings = [
  ['ascii', () => 'abc'], ['empty', () => ''], ['lone high', () => 'a\uD800'],
  ['lone low', () => '\uDC00b'], ['pair', () => '\uD83D\uDE00'],
  ['reversed pair', () => '\uDE00\uD83D'], ['mixed', () => 'x\uD800\uD83D\uDE00\uDC00y'],
  ['number', () => 123], ['null', () => null], ['undefined', () => undefined],
  ['symbol', () => Symbol('s')], ['object', () => ({ toString: () => 'a\uD800' })],
];
for (const name of ['isWellFormed', 'toWellFormed']) {
  compare(name, String.prototype[name], nb.stringMethods[name], strings, [[]]);
}

// Node 21 and 22: what the language defines.
const { groupBy } = nb.objectStatics;
const byParity = groupBy([1, 2, 3, 4, 5], (n, i) => (n % 2 ? 'odd' : 'even'));
const indexes = [];
groupBy('abc', (c, i) => { indexes.push(i); return c; });
const sym = Symbol('s');
const keyed = groupBy([1, 2, 3],
                      (n) => (n === 1 ? sym : n === 2 ? { toString: () => '__proto__' } : 1));
const mapped = nb.mapStatics.groupBy([-0, 0, NaN, NaN, 'a'], (x) => x);
const errors = {};
for (const [name, thunk] of [
  ['Object.groupBy(null)', () => groupBy(null, (x) => x)],
  ['Object.groupBy(1)', () => groupBy(1, (x) => x)],
  ['Object.groupBy no callback', () => groupBy([1])],
  ['Map.groupBy no callback', () => nb.mapStatics.groupBy([1], 'x')],
  ['Promise.withResolvers on a non-constructor', () => nb.promiseStatics.withResolvers.call({})],
  ['Promise.withResolvers, an executor given no functions',
    () => nb.promiseStatics.withResolvers.call(function C(ex) { ex(1, 2); })],
  ['Promise.withResolvers, an executor called twice',
    () => nb.promiseStatics.withResolvers.call(function C(ex) { ex(() => 0, () => 0); ex(); })],
]) errors[name] = show(thunk);
let closed = false;
const iterable = { [Symbol.iterator]() { let i = 0; return {
  next: () => ({ value: i++, done: i > 5 }), return: () => { closed = true; return {}; } }; } };
errors['a callback that throws'] = show(
  () => groupBy(iterable, () => { throw new RangeError('x'); }));
// What a cell does to the builtins does not change these (the language's do not change).
const saved = [Array.prototype.sort, Map.prototype.set, RegExp.prototype[Symbol.replace]];
Array.prototype.sort = function () { return this; };
Map.prototype.set = function () { return this; };
RegExp.prototype[Symbol.replace] = () => 'patched';
let patched;
try {
  patched = [nb.arrayMethods.toSorted.call([3, 1, 2]),
             nb.arrayMethods.toSpliced.call([1], 1, 0, 2, 3),
             [...nb.mapStatics.groupBy([1, 2], (n) => n % 2).keys()],
             nb.stringMethods.toWellFormed.call('a\uD800')];
} finally {
  [Array.prototype.sort, Map.prototype.set, RegExp.prototype[Symbol.replace]] = saved;
}
const { promise, resolve, reject } = nb.promiseStatics.withResolvers.call(Promise);
class MyPromise extends Promise {}
const sub = nb.promiseStatics.withResolvers.call(MyPromise);
out.checks = {
  byParity: [Object.getPrototypeOf(byParity), Object.keys(byParity), byParity.odd, byParity.even],
  indexes,
  keyed: [Object.getOwnPropertyNames(keyed), keyed[sym], keyed['__proto__'], keyed['1']],
  mapped: [...mapped.entries()].map(([k, v]) => [Object.is(k, -0) ? '-0' : String(k), v.length]),
  errors, closed, patched,
  resolvers: [promise instanceof Promise, typeof resolve, typeof reject,
              sub.promise instanceof MyPromise],
  names: [groupBy.name, groupBy.length, nb.mapStatics.groupBy.length,
          nb.promiseStatics.withResolvers.name, nb.promiseStatics.withResolvers.length],
};
resolve(42);
promise.then((v) => {
  out.checks.resolved = v;
  console.log(JSON.stringify(out));
});
