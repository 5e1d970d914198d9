// tests/unit/test_node_builtins.py: node_builtins.js's install() (argv[2]) on a Node whose
// own methods were taken away first, as on Node 18; prints the descriptors it made as JSON.
'use strict';
// As on Node 18: Node's own methods taken away first.
const TypedArray = Object.getPrototypeOf(Int8Array);
const places = [[Array.prototype, ['toSorted', 'toReversed', 'with', 'toSpliced']],
                [TypedArray.prototype, ['toSorted', 'toReversed', 'with']],
                [String.prototype, ['isWellFormed', 'toWellFormed']],
                [Object, ['groupBy']], [Map, ['groupBy']], [Promise, ['withResolvers']]];
const label = (target, name) =>
  `${typeof target === 'function' ? target.name : target.constructor.name}.${name}`;
for (const [target, names] of places) {
  for (const name of names) delete target[name];
}
const unscopables = Array.prototype[Symbol.unscopables];
const copies = ['toSorted', 'toReversed', 'toSpliced', 'with'];
const nativeUnscopables = copies.map((n) => unscopables[n]);
for (const n of copies) delete unscopables[n];
const kept = Array.prototype.map;
require(process.argv[2]).install();
const result = {};
for (const [target, names] of places) {
  for (const name of names) {
    const d = Object.getOwnPropertyDescriptor(target, name);
    result[label(target, name)] = d && [typeof d.value, d.writable, d.enumerable, d.configurable];
  }
}
result.unscopables = copies.map((n) => unscopables[n]);
result.nativeUnscopables = nativeUnscopables;
result.forIn = [];
for (const k in [1]) result.forIn.push(k);
result.untouched = Array.prototype.map === kept;
result.works = [[3, 1, 2].toSorted(), [1, 2].with(0, 9),
                Object.keys(Object.groupBy([1], () => 'k'))];
console.log(JSON.stringify(result));
