// JavaScript worker for the ws_sandbox agent: cells run in Node's main context, REPL-like.
//
// Started by the agent as `node worker_node.js CTL_IN CTL_OUT`. Cells arrive on CTL_IN as JSON
// lines {"code": "..."}, each maybe followed by {"t": "interrupt"}, the mark the agent writes
// just before an interrupt's SIGINT (below); the worker answers on CTL_OUT with JSON lines `ready`, `display`,
// `done`. stdout/stderr are pipes, which Node writes synchronously on Linux, so everything a
// cell printed is in the pipe before its `done` is written.
'use strict';

// The builtins this worker uses, as they were at its start: cells run in the same realm (below)
// and may assign globals of these names (`var JSON = ...` is a property of the global object).
const {
  Array, Boolean, Error, JSON, Number, Object, Promise, Set, String, SyntaxError, WeakMap,
  WeakSet, process, setImmediate, clearImmediate, setInterval, clearInterval, clearTimeout,
} = globalThis;
// What the control channel, the frames and the cell's own end run on, taken at the start too:
// a cell may also change the builtins' methods (`Array.prototype.push = ...`,
// `Object.prototype.then = ...`, `JSON.stringify = ...`). That breaks the cell's own code,
// and may break the notebook rewrite (the cell then fails), but never leaves a cell without
// its `done`, nor gives it another cell's. Frames are objects without a prototype.
const uncurry = (fn) => Function.prototype.call.bind(fn);
const ArrayPrototypePush = uncurry(Array.prototype.push);
const ArrayPrototypeShift = uncurry(Array.prototype.shift);
const StringPrototypeIndexOf = uncurry(String.prototype.indexOf);
const StringPrototypeSlice = uncurry(String.prototype.slice);
const StringPrototypeStartsWith = uncurry(String.prototype.startsWith);
const StringPrototypeReplaceAll = uncurry(String.prototype.replaceAll);
const listenerCount = uncurry(require('events').prototype.listenerCount);
const rawListeners = uncurry(require('events').prototype.rawListeners);
const addListener = uncurry(require('events').prototype.on);
const ObjectHasOwn = Object.hasOwn;
const ObjectAssign = Object.assign;
const ObjectCreate = Object.create;
const JSONParse = JSON.parse;
const JSONStringify = JSON.stringify;
const PromiseResolve = Promise.resolve.bind(Promise);
const PromiseThen = uncurry(Promise.prototype.then);

function frame(fields) {
  return ObjectAssign(ObjectCreate(null), fields);
}

const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { Console } = require('console');
const { builtinModules, createRequire } = require('module');
const { pathToFileURL } = require('url');
const writeSync = fs.writeSync;
const readSync = fs.readSync;
const { Buffer } = require('buffer');
const { StringDecoder } = require('string_decoder');
const StringDecoderWrite = uncurry(StringDecoder.prototype.write);
const TypedArrayPrototypeSubarray = uncurry(Object.getPrototypeOf(Uint8Array.prototype).subarray);
const { nextTick } = process;
const SocketRef = uncurry(net.Socket.prototype.ref);
const SocketUnref = uncurry(net.Socket.prototype.unref);

const CTL_IN = Number(process.argv[2]);
const CTL_OUT = Number(process.argv[3]);
const MAX_REPR_CHARS = 100000;
const WORKER_FILE = __filename;
const BUILTINS_FILE = path.join(__dirname, 'node_builtins.js');

function send(obj) {
  try {
    writeSync(CTL_OUT, JSONStringify(obj) + '\n');
  } catch (e) {
    process.exit(70);
  }
}

// Make every write to stdout/stderr complete before the next statement: libuv otherwise
// queues what a full pipe cannot take at once, and `done` could overtake the cell's output.
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') {
    stream._handle.setBlocking(true);
  }
}

// --- the user's globals ------------------------------------------------------------------
// Cells run in Node's main context, as in Node's REPL: a context of their own has builtins of
// its own, so an object Node made (an array from `fs.readdirSync`, an error `fs` throws, what
// `structuredClone` returns) failed `instanceof Array` or `instanceof Error` in a cell, and
// `catch (e) { if (e instanceof Error) ... }` took the wrong branch. The worker's own names are
// its module's, out of the cells' reach. Security is the sandbox's, not this worker's.
// The cells are the program's main module, as a script run by `node` is: `if (require.main
// === module) main();`, which models write often, ran nothing (require.main was the
// worker's module, and showed its path; a review). So are they for the modules a cell loads
// (process.mainModule). No `__dirname` or `__filename`, as in Node's REPL: as globals, ES
// modules would see them, where Node gives them none.
const cellFile = path.join(process.cwd(), '[cell]');
const userRequire = createRequire(cellFile);
globalThis.require = userRequire;
globalThis.module = {
  id: '.', path: process.cwd(), filename: cellFile, exports: {}, loaded: false, children: [],
  paths: userRequire.resolve.paths('x') || [], require: userRequire,
};
globalThis.exports = globalThis.module.exports;
userRequire.main = globalThis.module;
process.mainModule = globalThis.module;
globalThis.console = new Console({ stdout: process.stdout, stderr: process.stderr });
// Node 19 and later have a global `crypto` (Web Crypto's randomUUID, getRandomValues and
// subtle), which code written for them, or for a browser, uses without a require: on Node 18
// it failed with "crypto is not defined". Node 18's REPL has one too, the module, which is
// both: it has randomUUID, getRandomValues and subtle as well as createHash and the rest.
// Loaded on first use (the worker's start does not pay for it), and a cell may set it
// (`const crypto = require('crypto')` becomes an assignment to it).
if (!('crypto' in globalThis)) {
  const ObjectDefineProperty = Object.defineProperty;  // as it was at the start
  const settle = (value) => ObjectDefineProperty(globalThis, 'crypto', {
    value, writable: true, configurable: true, enumerable: false,
  });
  ObjectDefineProperty(globalThis, 'crypto', {
    configurable: true,
    enumerable: false,
    get() { const value = require('crypto'); settle(value); return value; },
    set(value) { settle(value); },
  });
}

// Later releases' builtins that code written for them uses without a thought (`toSorted`,
// `Object.groupBy`, `Promise.withResolvers`), where this Node lacks them: node_builtins.js.
require('./node_builtins.js').install();

// --- errors ------------------------------------------------------------------------------
// The frame of the async function a cell with top-level `await` runs in (its `})()`, the
// line after the cell's last), as `cell-N:L:`: not a line the user wrote.
let wrapperFrame = null;

// An error that comes of the sandbox having no network (a name that does not resolve, a
// network out of reach), itself or as the cause of what a library threw (`fetch` throws
// "TypeError: fetch failed" and keeps the reason as its cause) gets a note that says so.
const NO_NETWORK_CODES = new Set(['EAI_AGAIN', 'ENOTFOUND', 'ENETUNREACH', 'EHOSTUNREACH']);
const NO_NETWORK_NOTE = 'There is no network here: host names do not resolve and nothing ' +
  'outside the sandbox can be reached.';
// TCP and UDP sockets refused (EAFNOSUPPORT: the service's seccomp profile under runc).
const NO_SOCKETS_NOTE = 'TCP and UDP sockets are off in this sandbox, even on localhost: a ' +
  'local server and its client cannot run here. Unix sockets, pipes and in-process calls work.';

// Cells are not a file: like Node's REPL, they have no __dirname or __filename (defined as
// globals, ES modules would see them too). Code written for a script reaches for them often.
const NO_FILE_NOTE = 'A cell is not a file, so it has no __dirname or __filename (as in ' +
  "Node's REPL): use process.cwd(), the working directory (/workspace), instead.";
const NO_FILE_MESSAGE = /^(?:__dirname|__filename) is not defined$/;

// A package that is not here (`require('lodash')`, `import fetch from 'node-fetch'`): a model
// tries `npm install` next, as it tried pip in Python.
const MISSING_PACKAGE_NOTE = 'Packages cannot be installed here: there is no network and no ' +
  "npm. Node's built-in modules are here (fs, path, crypto, child_process, zlib, util, " +
  'readline, assert, node:test...).';
const MISSING_PACKAGE_MESSAGE = /^Cannot find (?:package '|module '(?![./]))/;

// A cell's import() resolves in the worker's module, and Node names the worker's file in
// what it says ("Cannot find package 'x' imported from /opt/.../worker_node.js"): the cell
// imported it.
function cellText(text) {
  return StringPrototypeReplaceAll(text, ` imported from ${WORKER_FILE}`, ' imported from a cell');
}

// The note for err (no network, with what failed when it is err's cause; no file; no such
// package); '' for another error.
function errorNote(err) {
  try {
    if (err instanceof ReferenceError && NO_FILE_MESSAGE.test(err.message)) {
      return NO_FILE_NOTE;
    }
    if ((err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND') &&
        MISSING_PACKAGE_MESSAGE.test(err.message)) {
      return MISSING_PACKAGE_NOTE;
    }
    let e = err;
    for (let depth = 0; depth < 8 && e !== null && typeof e === 'object'; depth++) {
      const note = NO_NETWORK_CODES.has(e.code) ? NO_NETWORK_NOTE
        : e.code === 'EAFNOSUPPORT' ? NO_SOCKETS_NOTE : '';
      if (note) return e === err ? note : `${String(e.message)}. ${note}`;
      e = e.cause;
    }
  } catch (e) {
    /* a getter of the user's threw: no note */
  }
  return '';
}

function userStack(err) {
  const note = errorNote(err);
  return stackOf(err) + (note ? `\n${note}` : '');
}

// Whether a line of a stack is a frame the user did not write: this worker's, the later
// builtins' it adds (node_builtins.js), Node's internals', or the async function a cell with
// top-level `await` runs in.
function hiddenFrame(l) {
  return /^\s+at /.test(l) && (l.includes(WORKER_FILE) || l.includes(BUILTINS_FILE) ||
    /\(node:|at node:/.test(l) ||
    (wrapperFrame !== null && /^\s+at (?:async )?cell-\d+:\d+:\d+$/.test(l) &&
      l.trim().replace(/^at (?:async )?/, '').startsWith(wrapperFrame)));
}

function stackOf(err) {
  if (err instanceof Error || (err && typeof err.stack === 'string')) {
    const lines = String(err.stack).split('\n');
    return cellText(lines.filter((l) => !hiddenFrame(l)).join('\n'));
  }
  return 'Uncaught ' + util.inspect(err);
}

// Every error's stack, as Node writes it (ErrorPrototypeToString, then a line per frame),
// less the hidden frames: one a cell catches and prints (`console.error(e)`, `console.trace()`)
// showed `runCell`, `pump` and the streams that brought the cell (a review), where an
// uncaught one (stackOf) did not. A cell may set its own Error.prepareStackTrace.
const ErrorPrototypeToString = uncurry(Error.prototype.toString);
function prepareStackTrace(error, trace) {
  let stack;
  try {
    stack = ErrorPrototypeToString(error);
  } catch (e) {
    stack = '<error>';
  }
  for (let i = 0; i < trace.length; i++) {
    const line = `\n    at ${trace[i]}`;
    if (!hiddenFrame(line)) stack += line;
  }
  return stack;
}
Error.prepareStackTrace = prepareStackTrace;

// A cell's error summary is cut to this many characters before it is sent: a long message of
// non-ASCII characters (six bytes each once escaped) would pass the agent's 2 MiB bound for a
// control line, and the agent would restart the interpreter. The agent keeps 2000.
const MAX_ERROR_CHARS = 4096;

function errorSummary(err) {
  if (err && typeof err === 'object' && 'name' in err && 'message' in err) {
    const note = errorNote(err);
    return cellText(`${err.name}: ${err.message}${note ? ` (${note})` : ''}`)
      .slice(0, MAX_ERROR_CHARS);
  }
  return 'Uncaught ' + util.inspect(err, { depth: 1 }).slice(0, 500);
}

function printError(err) {
  try {
    process.stderr.write(userStack(err) + '\n');
  } catch (e) {
    /* the user broke stderr; nothing else to do */
  }
}

// An error no code caught, or a promise rejected with no handler, while a cell runs makes the
// cell an error (the first one's summary), as it would end a Node.js program; one that comes
// between cells (a timer an earlier cell left) is printed at the start of the next cell, with
// a line that says so: output between cells reaches no one. Node reports unhandled
// rejections once the microtasks have run, after the cell's synchronous end: the worker waits
// for that (one turn of the event loop) before the cell's `done` when a rejection is pending
// (an internal of Node tells; where it cannot, after every cell).
let cellFailure = null; // the running cell's first such error's summary, or null
let cellRunning = false;
// Errors between cells, for the next cell: the first few, each cut short, and how many more.
const HELD_ERRORS = 3;
const HELD_ERROR_CHARS = 4096;
const heldErrors = [];
let heldErrorsDropped = 0;

function uncaught(err, inPromise) {
  // A listener of the user's own handles the event, as it keeps a Node.js program alive
  // (and Node then prints nothing).
  if (listenerCount(process, inPromise ? 'unhandledRejection' : 'uncaughtException') > 1) return;
  const prefix = inPromise ? 'Uncaught (in promise) ' : 'Uncaught ';
  const bare = (text) => (StringPrototypeStartsWith(text, 'Uncaught ')
    ? StringPrototypeSlice(text, 9) : text);
  let text;
  try {
    text = prefix + bare(userStack(err));
  } catch (e) {
    text = prefix + '[an error that cannot be shown]';
  }
  if (!cellRunning) {
    if (heldErrors.length < HELD_ERRORS) {
      ArrayPrototypePush(heldErrors, StringPrototypeSlice(text, 0, HELD_ERROR_CHARS));
    } else {
      heldErrorsDropped += 1;
    }
    return;
  }
  try {
    process.stderr.write(text + '\n');
  } catch (e) {
    /* the user broke stderr; nothing else to do */
  }
  if (cellFailure !== null) return;
  let summary;
  try {
    summary = bare(errorSummary(err)); // a getter of the user's may throw (it ended Node)
  } catch (e) {
    summary = '[an error whose message cannot be read]';
  }
  cellFailure = prefix + summary;
  if (cancelLeftWork) cancelLeftWork(); // it ends the program: the cell ends
}

process.on('uncaughtException', (err) => uncaught(err, false));
process.on('unhandledRejection', (reason) => uncaught(reason, true));

const rejectionPending = (() => {
  try {
    const { hasRejectionToWarn } = require('internal/process/promises');
    if (typeof hasRejectionToWarn === 'function') return hasRejectionToWarn;
  } catch (err) {
    /* another Node */
  }
  return () => true;
})();

// Resolves once Node has reported the rejections the cell left unhandled.
function rejectionsReported() {
  if (!rejectionPending()) return null;
  return new Promise((resolve) => setImmediate(resolve));
}

// --- interrupts --------------------------------------------------------------------------
// While a script runs synchronously, `breakOnSigint` turns SIGINT into an exception. While the
// worker awaits a cell's promise, this handler ends the wait. When idle, SIGINT is ignored: it
// may be late (its cell has ended) or early (its cell not read yet).
//
// So the agent also writes a mark, {"t": "interrupt"}, just before the SIGINT, and the mark
// alone is enough where the signal can be missed: a mark read after a cell's code and before
// its `done` is that cell's (the agent sends the next cell only after the `done`). Read behind
// a cell that has not begun, it ends that cell without running it; read while the cell awaits,
// it ends the wait (Node drops a SIGINT that lands while `breakOnSigint` is being taken down,
// as the synchronous part of a cell that awaits returns); read once the cell has ended, it is
// dropped. A SIGINT that lands between reading a cell and the start of its synchronous run is
// seen just before the run (interruptedBeforeRun), unless it is sent in the microseconds
// between that look and the run's start: a cell that awaits still ends (its mark arrives
// while it waits), a synchronous loop runs on until the service restarts the worker.
//
// `breakOnSigint` starts Node's SIGINT watchdog for each run and stops it after: a thread
// created and joined, signal masks and the SIGINT handler swapped, about 25 system calls per
// cell (50 us of a cell's 0.4 ms under runc, more under gVisor, where each system call costs
// tens of microseconds). The worker holds the watchdog for its life instead (an internal of
// Node, which the agent's --expose-internals opens): a cell's start and stop then only count.
// With it held, SIGINT is the watchdog's alone: it ends a synchronous run, and is dropped
// otherwise, so a cell that awaits is ended by its mark. Where the watchdog cannot be held
// (another Node), SIGINT also ends a wait, as below.
let cancelWait = null;

// One of Node's internal bindings, or null (another Node).
function binding(name) {
  const warn = process.emitWarning;
  process.emitWarning = () => {}; // "These APIs are for internal testing only"
  try {
    const { internalBinding } = require('internal/test/binding');
    return internalBinding(name);
  } catch (err) {
    return null;
  } finally {
    process.emitWarning = warn;
  }
}

const contextify = binding('contextify');

// A cell's own SIGINT listener (`process.on('SIGINT', ...)`) took the signal from the
// watchdog: Node's signal handling (libuv) installs its handler over the watchdog's when a
// first SIGINT handle starts, and puts back the default action (death) when the last one
// stops, which `breakOnSigint` does for each run that has listeners. An interrupt of the
// next synchronous run then killed the interpreter, its state lost (a review). So the worker
// holds a SIGINT handle of its own for its life, started before the watchdog: libuv's
// handler goes in first and the watchdog's over it, and libuv neither installs its handler
// again nor puts back the default while the worker's handle is there. SIGINT stays the
// watchdog's: a cell's listeners do not hear the agent's interrupts.
function holdSigintHandle() {
  try {
    const { Signal } = binding('signal_wrap');
    const handle = new Signal();
    handle.unref();
    handle.onsignal = () => {};
    return handle.start(require('os').constants.signals.SIGINT) === 0;
  } catch (err) {
    return false;
  }
}

function holdSigintWatchdog() {
  try {
    return holdSigintHandle() && contextify.startSigintWatchdog() === true;
  } catch (err) {
    return false;
  }
}

const watchdogHeld = holdSigintWatchdog();
if (!watchdogHeld) {
  process.on('SIGINT', () => {
    if (cancelWait) cancelWait();
  });
}

// A SIGINT that lands between reading a cell and the start of its run is not seen by the run:
// a cell that spins from its first line (`while (true) {}`) ran on until the service restarted
// the worker, its state lost (13 of 100 interrupts sent right behind such a cell). So just
// before the run the worker reads what has come on the control pipe: the agent writes the
// mark before the SIGINT, so a SIGINT sent by then has its mark there, and the cell stops
// before it runs. The held watchdog keeps a SIGINT that came with no run as pending (a run's
// end clears it): one without a mark was late, an ended cell's, and is taken and dropped (and
// the pipe read again, for a SIGINT of this cell's sent since). Left: one sent between this
// look and the run's start (4 in 1,000 interrupts sent right behind, on a loaded machine).
function interruptedBeforeRun() {
  if (!watchdogHeld) return false;
  readControlNow();
  if (!interruptPending && contextify.watchdogHasPendingSigint()) {
    contextify.startSigintWatchdog(); // held: only counts, and the stop after it takes the signal
    contextify.stopSigintWatchdog();
    readControlNow(); // (a SIGINT of this cell's since the read above: its mark is here now)
  }
  return interruptPending;
}

function isInterrupt(err) {
  return Boolean(err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED');
}

// --- cells -------------------------------------------------------------------------------
let cellNumber = 0;

// --- notebook semantics: declarations that can be run again, top-level await --------------
// A notebook re-runs cells: `const data = ...` twice must not fail with "Identifier 'data'
// has already been declared" (a global lexical binding is forever, even when its cell threw
// before reaching it). So top-level `let`, `const` and `class` declarations become `var`
// (global properties, which a later cell may declare again; `const` is then reassignable,
// and there is no temporal dead zone). A cell with top-level `await` runs as the body of an
// async function: its top-level declarations are hoisted to globals and become assignments,
// and the value of its last expression statement is returned, so it persists and shows.
// The parse uses Debian's acorn (a dependency of its Node.js); where it is missing, or it
// cannot parse the cell, the cell runs as written.
let acorn; // undefined: not loaded yet; null: not available

function loadAcorn() {
  if (acorn === undefined) {
    acorn = null;
    for (const where of ['/usr/share/nodejs/acorn', 'acorn']) {
      try {
        acorn = require(where);
        break;
      } catch (err) {
        /* try the next place */
      }
    }
  }
  return acorn;
}

const FUNCTION_NODES = new Set([
  'FunctionDeclaration', 'FunctionExpression', 'ArrowFunctionExpression',
]);

// Each AST node directly under `node`, with the key that holds it.
function* childNodes(node) {
  for (const key of Object.keys(node)) {
    const value = node[key];
    for (const child of Array.isArray(value) ? value : [value]) {
      if (child && typeof child.type === 'string') yield [key, child];
    }
  }
}

// Whether `node` holds an `await` outside any function of its own (a top-level await).
function hasTopLevelAwait(node) {
  if (FUNCTION_NODES.has(node.type)) return false;
  if (node.type === 'AwaitExpression') return true;
  if (node.type === 'ForOfStatement' && node.await) return true;
  for (const [, child] of childNodes(node)) {
    if (hasTopLevelAwait(child)) return true;
  }
  return false;
}

// The names a binding pattern declares: `a`, `{b, c: [d]}`, `[e = 1, ...f]`.
function boundNames(pattern, names) {
  if (!pattern) return names;
  switch (pattern.type) {
    case 'Identifier': names.push(pattern.name); break;
    case 'ObjectPattern':
      for (const prop of pattern.properties) {
        boundNames(prop.type === 'RestElement' ? prop.argument : prop.value, names);
      }
      break;
    case 'ArrayPattern': for (const el of pattern.elements) boundNames(el, names); break;
    case 'AssignmentPattern': boundNames(pattern.left, names); break;
    case 'RestElement': boundNames(pattern.argument, names); break;
    default: break;
  }
  return names;
}

// Edits are [start, end, text, rank]. Where several meet at one offset, the rank orders them:
// what closes the node before it (CLOSE), the exported functions' prologue, then what opens
// the node after it (OPEN): `class A{}A` becomes `A = class A{};return (A)`.
const CLOSE = 0;
const PROLOGUE = 1;
const OPEN = 2;

// `let a = 1, {b} = c;` becomes `void ((a = 1), ({b} = c));` in place: every line break and
// every character between the declarators stays where it was, so error positions hold.
function assignmentEdits(decl, edits) {
  edits.push([decl.start, decl.start + decl.kind.length, 'void (', OPEN]);
  const last = decl.declarations[decl.declarations.length - 1];
  for (const d of decl.declarations) {
    edits.push([d.start, d.start, '(', OPEN]);
    const unset = !d.init && decl.kind !== 'var' ? ' = undefined' : '';
    let close = ')';
    if (d === last) close = decl.end === d.end ? '));' : '))';
    edits.push([d.end, d.end, unset + close, CLOSE]);
  }
}

// Every `var` declaration of the cell's own function scope but its top-level statements (in
// blocks, loops, try, switch; not in nested functions or static blocks), from the program
// down (`top`: `node` is the program): called with the declaration and whether it is a `for`
// head (`for (var i = 0; ...)`, `for (var k in o)`).
function nestedVars(node, visit, top) {
  if (FUNCTION_NODES.has(node.type) || node.type === 'StaticBlock') return; // own scope
  for (const [key, child] of childNodes(node)) {
    if (child.type === 'VariableDeclaration' && child.kind === 'var' && !top) {
      const head = (key === 'init' && node.type === 'ForStatement') ||
        (key === 'left' && (node.type === 'ForInStatement' || node.type === 'ForOfStatement'));
      visit(child, head);
    }
    nestedVars(child, visit, top && MODULE_ITEMS.has(child.type)); // `export var`: top level
  }
}

// The cell's source for vm.Script, and whether it is an async function's body.
function parseCell(code, sourceType) {
  return acorn.parse(code, {
    ecmaVersion: 'latest', sourceType, allowAwaitOutsideFunction: true, allowHashBang: true,
  });
}

const MODULE_ITEMS = new Set([
  'ImportDeclaration', 'ExportNamedDeclaration', 'ExportDefaultDeclaration',
  'ExportAllDeclaration',
]);

// The cell's text from `node`'s start to its end, as only its line breaks (lines hold).
function lineBreaks(code, node) {
  return code.slice(node.start, node.end).replace(/[^\n]/g, '');
}

// `import x, {a, b as c} from 'm'` becomes `({default: x, a, b: c} = await import('m'));`,
// `import * as n from 'm'` `n = await import('m');`, `import 'm'` `await import('m');`:
// assignments to the cell's hoisted globals, as its declarations become.
function importEdits(code, stmt, edits, hoisted) {
  const load = `await import(${code.slice(stmt.source.start, stmt.source.end)})`;
  let namespace = null;
  const fields = [];
  for (const spec of stmt.specifiers) {
    const local = spec.local.name;
    hoisted.push(local);
    if (spec.type === 'ImportNamespaceSpecifier') {
      namespace = local;
    } else if (spec.type === 'ImportDefaultSpecifier') {
      fields.push(`default: ${local}`);
    } else {
      const imported = code.slice(spec.imported.start, spec.imported.end);
      fields.push(imported === local ? local : `${imported}: ${local}`);
    }
  }
  let text = load;
  if (namespace) {
    const def = fields.find((f) => f.startsWith('default: '));
    text = `${namespace} = ${load}` + (def ? `, ${def.slice(9)} = ${namespace}.default` : '');
  } else if (fields.length) {
    text = `({${fields.join(', ')}} = ${load})`;
  }
  edits.push([stmt.start, stmt.end, `${text};${lineBreaks(code, stmt)}`, OPEN]);
}

// The names a cell declares at its top level (its functions' aside) are lexical globals,
// each declared by a script of its own (`let x;`) before the first cell that declares it
// runs; the cell's declarations become assignments to them. A lexical global is read and
// written at full speed (when cells ran in a vm context of their own, a property of its
// global object went through interceptors, 100 to 200 times slower: a loop over a
// top-level `var` took seconds). Declared by a script of its own, a binding is always
// initialized (one that a cell declared itself stayed in the temporal dead zone for good if
// the cell threw before its `let`). A name that cannot be one (a function of an earlier
// cell, a global Node has) stays a property of the global object, assigned the same way.
const lexicalNames = new Set();
const isGlobalProperty = (name) => Object.prototype.hasOwnProperty.call(globalThis, name);

// Called once V8 has accepted the rewritten cell, before it runs. A name the global object
// already has (`require`, `console`, a builtin, `x = 5` of an earlier cell) is left to it: a
// binding would hide it, for good.
function declareLexical(names) {
  const fresh = [...new Set(names)].filter(
    (name) => !lexicalNames.has(name) && !isGlobalProperty(name));
  if (!fresh.length) return;
  const declare = (list) => vm.runInThisContext(`let ${list.join(', ')};`);
  try {
    declare(fresh);
    for (const name of fresh) lexicalNames.add(name);
    return;
  } catch (err) {
    /* one of them is taken: each on its own */
  }
  for (const name of fresh) {
    try {
      declare([name]);
      lexicalNames.add(name);
    } catch (err) {
      /* a property of the global object: assigned as such */
    }
  }
}

function notebookSource(code) {
  if (!/\b(?:let|const|var|class|function|await|import|export)\b/.test(code) || !loadAcorn()) {
    return null;
  }
  let program;
  try {
    program = parseCell(code, 'script');
  } catch (err) {
    // Static `import` and `export`, which model-written code uses, parse only in a module.
    // A cell is a script: its imports become dynamic ones, its exports plain declarations.
    try {
      program = parseCell(code, 'module');
    } catch (err2) {
      return null; // V8 reports the error, in its own words
    }
    if (!program.body.some((stmt) => MODULE_ITEMS.has(stmt.type))) return null;
  }
  const wrapped = program.body.some(
    (stmt) => hasTopLevelAwait(stmt) || stmt.type === 'ImportDeclaration');
  const edits = []; // [start, end, text, rank]; the ranges never overlap
  const hoisted = []; // names declared, functions' aside
  const functions = [];
  for (let stmt of program.body) {
    if (stmt.type === 'ImportDeclaration') {
      importEdits(code, stmt, edits, hoisted);
      continue;
    }
    if (stmt.type === 'ExportNamedDeclaration' && stmt.declaration) {
      edits.push([stmt.start, stmt.declaration.start, '', OPEN]); // `export ` dropped
      stmt = stmt.declaration;
    } else if (stmt.type === 'ExportDefaultDeclaration') {
      const decl = stmt.declaration;
      if (!(decl.id && (decl.type === 'FunctionDeclaration' || decl.type === 'ClassDeclaration'))) {
        // An expression, or a function or class without a name: a value in parentheses.
        edits.push([stmt.start, decl.start, '(', OPEN]);
        edits.push([decl.end, decl.end, ');', CLOSE]);
        continue;
      }
      edits.push([stmt.start, decl.start, '', OPEN]); // `export default ` dropped
      stmt = decl;
    } else if (MODULE_ITEMS.has(stmt.type)) {
      edits.push([stmt.start, stmt.end, lineBreaks(code, stmt), OPEN]); // `export {a}`: no-op
      continue;
    }
    if (stmt.type === 'VariableDeclaration') {
      for (const decl of stmt.declarations) boundNames(decl.id, hoisted);
      assignmentEdits(stmt, edits);
    } else if (stmt.type === 'ClassDeclaration') {
      hoisted.push(stmt.id.name);
      edits.push([stmt.start, stmt.start, `void (${stmt.id.name} = `, OPEN]);
      edits.push([stmt.end, stmt.end, ');', CLOSE]); // no value, as a declaration has none
    } else if (stmt.type === 'FunctionDeclaration') {
      functions.push(stmt);
    }
  }
  // A `var` in a block or a loop is a global too.
  nestedVars(program, (decl, head) => {
    for (const d of decl.declarations) boundNames(d.id, hoisted);
    if (head) {
      edits.push([decl.start, decl.start + decl.kind.length, '', OPEN]);
    } else {
      assignmentEdits(decl, edits);
    }
  }, true);
  const declare = hoisted.filter((name) => !functions.some((f) => f.id.name === name));
  const exported = [];
  for (const stmt of functions) {
    const name = stmt.id.name;
    if (lexicalNames.has(name)) {
      // An earlier cell's `let`, `const` or `class` made it lexical: a declaration would
      // be refused ("already declared"). Assigned where it stands (not hoisted).
      edits.push([stmt.start, stmt.start, `void (${name} = `, OPEN]);
      edits.push([stmt.end, stmt.end, ');', CLOSE]);
    } else if (wrapped) {
      exported.push(name);
    }
  }
  if (!wrapped) {
    return edits.length ? { source: applyEdits(code, edits), wrapped: false, declare } : null;
  }
  const statements = program.body.filter((stmt) => stmt.type !== 'EmptyStatement');
  const last = statements[statements.length - 1];
  if (last && last.type === 'ExpressionStatement' && !last.directive) {
    edits.push([last.start, last.start, 'return (', OPEN]);
    edits.push([last.expression.end, last.expression.end, ')', CLOSE]);
  }
  if (exported.length) {
    // Function declarations are hoisted in the async body; make them globals at its start
    // (after any directive prologue, which must stay first).
    const first = program.body.find((stmt) => !stmt.directive);
    const at = first ? first.start : code.length;
    const prologue = exported.map((name) => `globalThis.${name} = ${name}; `).join('');
    edits.push([at, at, prologue, PROLOGUE]);
  }
  if (code.startsWith('#!')) edits.push([0, 2, '//', OPEN]); // no longer the first line
  return { source: `(async () => {\n${applyEdits(code, edits)}\n})()`, wrapped: true, declare };
}

function applyEdits(code, edits) {
  // In source order; at one offset by rank, then insertions before a replacement.
  edits.sort((a, b) => a[0] - b[0] || a[3] - b[3] || a[1] - b[1]);
  let out = '';
  let at = 0;
  for (const [start, end, text] of edits) {
    out += code.slice(at, start) + text;
    at = end;
  }
  return out + code.slice(at);
}

// `import()` in a cell loads through Node's own loader; a path or a package is found from the
// working directory, as `require` in a cell finds it.
function importModuleDynamically(specifier) {
  if (typeof specifier === 'string' && !specifier.startsWith('node:') &&
      !builtinModules.includes(specifier)) {
    let resolved = null;
    try {
      resolved = userRequire.resolve(specifier);
    } catch (err) {
      /* let import() report it */
    }
    if (resolved) return import(pathToFileURL(resolved).href);
    // a path that is not there: said as the working directory's, not the worker's
    if (/^\.{1,2}(?:\/|$)|^\//.test(specifier)) {
      return import(new URL(specifier, pathToFileURL(`${process.cwd()}/`)).href);
    }
  }
  return import(specifier);
}

// Whether the cell is one object literal (`{a: 1}`), which a REPL shows as the object, not a
// block with a label. Only the whole cell: `{}\n(1)` is a block and then 1, not a call.
function isObjectLiteral(code) {
  if (!/^\s*\{/.test(code) || !/\}\s*$/.test(code) || !loadAcorn()) return false;
  try {
    const program = acorn.parse(`(${code}\n)`, { ecmaVersion: 'latest', sourceType: 'script' });
    return program.body.length === 1 && program.body[0].type === 'ExpressionStatement' &&
      program.body[0].expression.type === 'ObjectExpression';
  } catch (err) {
    return false; // a block
  }
}

function compile(code, filename) {
  // Its line, with lineOffset -1: the source's lines are the prefix's (0), the cell's, then
  // the wrapper's end.
  // (Line breaks as V8 counts them.)
  wrapperFrame = `${filename}:${code.split(/\r\n|[\n\r\u2028\u2029]/).length + 1}:`;
  const notebook = notebookSource(code);
  if (notebook) {
    const lineOffset = notebook.wrapped ? -1 : 0;
    let script = null;
    try {
      script = new vm.Script(notebook.source, { filename, lineOffset, importModuleDynamically });
    } catch (err) {
      // A rewrite V8 refuses (a fault of ours): the cell as written, V8's words about it.
    }
    if (script) {
      declareLexical(notebook.declare);
      return { script, wrapped: notebook.wrapped };
    }
  }
  if (!notebook && isObjectLiteral(code)) {
    try {
      const source = `(${code}\n)`;
      return { script: new vm.Script(source, { filename, importModuleDynamically }), wrapped: false };
    } catch (err) {
      /* V8 disagrees with acorn: the cell as written */
    }
  }
  try {
    return { script: new vm.Script(code, { filename, importModuleDynamically }), wrapped: false };
  } catch (err) {
    // Top-level await without acorn: run the cell as the body of an async function. Its
    // let/const are then local to the cell and there is no value.
    if (err instanceof SyntaxError && /\bawait\b/.test(code)) {
      try {
        const body = `(async () => {\n${code}\n})()`;
        return {
          script: new vm.Script(body, { filename, lineOffset: -1, importModuleDynamically }),
          wrapped: true,
          valueless: true,
        };
      } catch (err2) {
        /* report the original error */
      }
    }
    throw err;
  }
}

// Before a cell: the errors no code caught since the last one ended.
function printHeldErrors() {
  const count = heldErrors.length;
  if (count === 0) return;
  const dropped = heldErrorsDropped;
  const held = [];
  for (let i = 0; i < count; i++) held[i] = heldErrors[i];
  heldErrors.length = 0; // taken, whatever happens next
  heldErrorsDropped = 0;
  let text = '';
  for (let i = 0; i < count; i++) {
    text += `${held[i]}\n(thrown between cells, by work an earlier cell started)\n`;
  }
  if (dropped > 0) text += `(and ${dropped} more errors between cells)\n`;
  try {
    process.stderr.write(text);
  } catch (e) {
    /* the user broke stderr */
  }
}

async function runCell(code) {
  printHeldErrors();
  cellNumber += 1;
  const filename = `cell-${cellNumber}`;
  let value;
  let valueless = false;
  try {
    const compiled = compile(code, filename);
    valueless = Boolean(compiled.valueless);
    if (interruptedBeforeRun()) {
      process.stderr.write('Interrupted\n');
      return frame({ t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' });
    }
    value = compiled.script.runInThisContext({ breakOnSigint: true, displayErrors: false });
    if (value !== null && (typeof value === 'object' || typeof value === 'function') &&
        typeof value.then === 'function') {
      cellAwaited = true;
      let interrupted = false;
      let stalled = false;
      const stop = new Promise((resolve) => {
        cancelWait = () => {
          interrupted = true;
          resolve();
        };
        cancelStalled = () => {
          stalled = true;
          resolve();
        };
      });
      listenForBeforeExit();
      SocketUnref(ctl); // see onStalled
      try {
        // As Promise.race, which iterates its argument with the cells' array iterator.
        const pending = value;
        value = await new Promise((resolve, reject) => {
          PromiseThen(PromiseResolve(pending), resolve, reject);
          PromiseThen(stop, resolve);
        });
      } finally {
        SocketRef(ctl);
        cancelWait = null;
        cancelStalled = null;
      }
      if (interrupted) {
        process.stderr.write('Interrupted\n');
        return frame({ t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' });
      }
      if (stalled) {
        process.stderr.write(`${STALLED}\n`);
        return frame({ t: 'done', status: 'error', exit_code: 13, error: STALLED });
      }
    }
  } catch (err) {
    if (isInterrupt(err)) {
      process.stderr.write('Interrupted\n');
      return frame({ t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' });
    }
    printError(err);
    return frame({ t: 'done', status: 'error', exit_code: 1, error: errorSummary(err) });
  }
  if (value !== undefined && !valueless) {
    let text;
    try {
      text = util.inspect(value, { colors: false });
    } catch (err) {
      text = String(value);
    }
    if (text.length > MAX_REPR_CHARS) text = text.slice(0, MAX_REPR_CHARS) + '…';
    send(frame({ t: 'display', kind: 'execute_result', data: frame({ 'text/plain': text }) }));
  }
  return frame({ t: 'done', status: 'success', exit_code: 0, error: null });
}

// A cell that awaits what nothing can ever settle (`await rl.question(...)` with no input, a
// promise no one resolves) would wait out the cell's time limit. Node itself exits there, with
// "unsettled top-level await" (exit code 13), when its event loop has nothing left to do. The
// worker does the same for the cell: while a cell awaits, the control pipe does not keep the
// loop alive (unref), so an empty loop emits 'beforeExit', and the cell ends with an error;
// a timer, a child process, a socket or a file read the cell waits for keeps the loop alive.
const STALLED = 'Error: the cell awaits a promise that nothing can settle (no timer, I/O or ' +
  'other work is pending; Node exits here with "unsettled top-level await"). A cell has no ' +
  'input: its stdin is empty.';
let cancelStalled = null;
let cancelLeftWork = null; // see awaitLeftWork
let cellAwaited = false; // whether the worker awaited the running cell's value (see pump)
function onBeforeExit() {
  if (cancelStalled) cancelStalled();
}

// Before the control pipe lets the loop empty: without this listener (a cell's
// `process.removeAllListeners('beforeExit')`) Node would exit there.
function listenForBeforeExit() {
  const listeners = rawListeners(process, 'beforeExit');
  for (let i = 0; i < listeners.length; i++) if (listeners[i] === onBeforeExit) return;
  addListener(process, 'beforeExit', onBeforeExit);
}
listenForBeforeExit();

// --- the work a cell leaves running ------------------------------------------------------
// A cell ends once the work it started and did not await is done, as a Node.js program ends
// when its work is: a timer, `setImmediate`, a file read with a callback, a child process,
// a socket it opened, readline's 'close' on the empty stdin. What their callbacks print is
// then the cell's own output (it reached no one: output between cells is not sent), and a
// one-shot call gets it. The worker counts what it can see of Node's loop (its timer lists,
// immediates, requests and handles), so work on Node's thread pool (zlib, crypto's callbacks,
// dns.resolve) and worker threads, which Node lists nowhere, does not hold a cell.
//
// Work meant to run on does not hold a cell: an interval, a listening server and the
// connections it accepted, a UDP socket, a watcher, what is unref'd, and whatever was there
// when the cell started (an earlier cell's), with what it starts: a timer knows the work
// whose callback made it (its trigger id), and while the cell waits each resource's maker is
// noted as it is made (see isOwn and noteOrigin). What was made where the maker is not known
// (after an `await`, in a promise's callback, before the wait: Node tracks promises only
// with costly hooks) counts as the cell's if no work of its kind was pending when the cell
// started, and as background otherwise (an earlier cell's `for (;;) await sleep(100)` makes
// such timers without end).
//
// The worker looks again once each callback has returned (`init`, `after` and `destroy`
// async hooks, enabled for the wait only: they make promises there several times slower;
// the last forgets what has ended, see forget), in the check
// phase of the same turn of the loop, and not while an immediate is pending; and every
// LOOK_EVERY_MS. The cell ends when nothing of its own is left. An interrupt or the cell's
// time limit ends the wait, and an error no one handles ends it too, as it ends a program.
// Where Node's internals are not there (another Node), a cell ends with its code, as in
// Node's REPL.
const leftWork = (() => {
  try {
    const timers = require('internal/timers');
    const {
      timerListMap, kRefed, immediateQueue, async_id_symbol: asyncIdOf,
      trigger_async_id_symbol: triggerIdOf,
    } = timers;
    const { newAsyncId, executionAsyncId } = require('internal/async_hooks');
    // fs.watch's and fs.watchFile's (not exported by fs).
    const { FSWatcher, StatWatcher } = require('internal/fs/watchers');
    const { createHook } = require('async_hooks');
    const { timeoutInfo } = binding('timers') || {}; // [0]: how many timers are ref'd
    if (typeof kRefed !== 'symbol' || typeof asyncIdOf !== 'symbol' || !timeoutInfo ||
        typeof triggerIdOf !== 'symbol' || !immediateQueue ||
        timerListMap === null || typeof timerListMap !== 'object' ||
        typeof newAsyncId !== 'function' || typeof executionAsyncId !== 'function' ||
        typeof FSWatcher !== 'function' || typeof StatWatcher !== 'function' ||
        typeof process._getActiveHandles !== 'function' ||
        typeof process._getActiveRequests !== 'function') {
      return null;
    }
    return {
      timerListMap, kRefed, immediateQueue, asyncIdOf, triggerIdOf, newAsyncId,
      executionAsyncId, FSWatcher, StatWatcher, timeoutInfo,
      activeHandles: uncurry(process._getActiveHandles),
      activeRequests: uncurry(process._getActiveRequests),
      waitHooks: createHook({
        init: noteOrigin, after: lookAfterCallback, destroy: forget,
      }),
    };
  } catch (err) {
    return null;
  }
})();
const SetAdd = uncurry(Set.prototype.add);
const SetHas = uncurry(Set.prototype.has);
const SetDelete = uncurry(Set.prototype.delete);
const WeakSetAdd = uncurry(WeakSet.prototype.add);
const WeakSetHas = uncurry(WeakSet.prototype.has);
const WeakMapGet = uncurry(WeakMap.prototype.get);
const WeakMapSet = uncurry(WeakMap.prototype.set);
const MAX_TIMER_STEPS = 1e6; // a walk's bound (a cell may link a timer to itself)
// Each timer list's newest timer the worker has looked at (what is behind it is older).
const timersSeen = new WeakMap();
let dgramSocket;

// The handles that keep the loop alive, the worker's own left out.
function refHandles() {
  const found = [];
  const all = leftWork.activeHandles(process);
  for (let i = 0; i < all.length; i++) {
    const h = all[i];
    if (h !== ctl && h !== process.stdout && h !== process.stderr) found[found.length] = h;
  }
  return found;
}

// What the cell starts with. What was made before it has a lower async id; the handles
// keeping the loop alive are noted. Quiet: no timeout, immediate or request of earlier work
// pending (which could be a loop making more of its kind without end).
function loopBefore() {
  if (leftWork === null) return null;
  const handles = new WeakSet();
  const list = refHandles();
  for (let i = 0; i < list.length; i++) WeakSetAdd(handles, list[i]);
  return frame({
    firstId: leftWork.newAsyncId(), contextId: leftWork.executionAsyncId(),
    quietTimers: !timeoutPending() && !refImmediatePending(),
    quietRequests: leftWork.activeRequests(process).length === 0,
    handles, own: new Set(), background: new Set(), held: [], idle: [],
    looked: new WeakSet(), timers: -1, alone: false, waitFrom: 0, servers: new Set(),
    others: new Set(), // of background: what earlier cells' work and servers' connections made
  });
}

// Whether a timeout (not an interval) keeps the loop alive: looked for only when a timer does.
function timeoutPending() {
  const { timerListMap, kRefed, timeoutInfo } = leftWork;
  if (!(timeoutInfo[0] > 0)) return false;
  let steps = 0;
  for (const duration in timerListMap) { // an object without a prototype
    const list = timerListMap[duration];
    for (let t = list._idleNext; t && t !== list; t = t._idleNext) {
      if (++steps > MAX_TIMER_STEPS) return true;
      if (t[kRefed] === true && !t._repeat) return true;
    }
  }
  return false;
}

function runsOn(h) {
  const { FSWatcher, StatWatcher } = leftWork;
  if (h instanceof net.Server || h instanceof FSWatcher || h instanceof StatWatcher) return true;
  if (h instanceof net.Socket && h.server) return true; // a server's connection
  if (dgramSocket === undefined) dgramSocket = require('dgram').Socket;
  return h instanceof dgramSocket;
}

// Whether the async resource `id`, made by `trigger` (the resource whose callback ran, or 0
// or 1 where Node does not know: after an `await`), is the cell's own work; noted either way.
// `quiet`: the answer when the maker is not known (a promise's callback, or work that ended
// before the worker looked, while the cell awaited).
function isOwn(cell, id, trigger, quiet) {
  if (typeof id !== 'number' || id < cell.firstId) return false; // from before the cell
  if (SetHas(cell.own, id)) return true;
  if (SetHas(cell.background, id)) return false;
  let own;
  if (SetHas(cell.own, trigger) || (trigger === cell.contextId && trigger > 1)) {
    own = true; // made by the cell's code or its work
  } else if (SetHas(cell.background, trigger) || (trigger > 1 && trigger < cell.firstId)) {
    own = false; // by work from before the cell (an earlier cell's interval), or by its work
    if (SetHas(cell.others, trigger) || trigger < cell.firstId) SetAdd(cell.others, id);
  } else if (cell.alone && (id < cell.waitFrom || trigger >= cell.firstId && trigger < cell.waitFrom)) {
    own = true; // made, or made by what was made, while only the cell ran (see awaitLeftWork)
  } else {
    own = quiet;
  }
  SetAdd(own ? cell.own : cell.background, id);
  return own;
}

// A timer's or an immediate's: an interval runs on (and so does what it makes).
function isOwnTimer(cell, x) {
  const { asyncIdOf, triggerIdOf } = leftWork;
  if (x._repeat) {
    if (x[asyncIdOf] >= cell.firstId) SetAdd(cell.background, x[asyncIdOf]);
    return false;
  }
  return isOwn(cell, x[asyncIdOf], x[triggerIdOf], cell.quietTimers);
}

// An interrupt (or the cell's time limit) clears the cell's own pending timeouts and
// immediates: the work it awaited or left (a loop that sleeps between steps, in the cell or
// in an async function it called) stops there, as a script stops on Ctrl-C. It went on, and
// printed into later cells (a review). What is the cell's own is what holds a cell
// (isOwnTimer); intervals, servers, sockets and child processes run on.
function clearOwnTimers(cell) {
  if (leftWork === null || cell === null) return;
  const { timerListMap, immediateQueue } = leftWork;
  const own = [];
  let steps = 0;
  for (const duration in timerListMap) { // an object without a prototype
    const list = timerListMap[duration];
    for (let t = list._idleNext; t && t !== list && ++steps <= MAX_TIMER_STEPS; t = t._idleNext) {
      if (isOwnTimer(cell, t)) own[own.length] = t;
    }
  }
  for (let i = 0; i < own.length; i++) clearTimeout(own[i]);
  own.length = 0;
  for (let i = immediateQueue.head; i && ++steps <= MAX_TIMER_STEPS; i = i._idleNext) {
    if (isOwnTimer(cell, i)) own[own.length] = i;
  }
  for (let i = 0; i < own.length; i++) clearImmediate(own[i]);
}

// While the cell waits, what is made is noted as it is made (an `init` async hook): a chain
// of timers or immediates, or a timer an I/O callback starts, is known by its maker even
// when no look came between.
function noteOrigin(asyncId, type, triggerAsyncId, resource) {
  const cell = waitingCell;
  if (cell === null) return;
  if (type === 'Timeout' && resource && resource._repeat) {
    SetAdd(cell.background, asyncId);
    return;
  }
  if (type === 'TCPSERVERWRAP' || type === 'PIPESERVERWRAP') SetAdd(cell.servers, asyncId);
  if ((type === 'TCPWRAP' || type === 'PIPEWRAP') && SetHas(cell.servers, triggerAsyncId)) {
    SetAdd(cell.background, asyncId); // a connection a server accepted (see markServer)
    SetAdd(cell.others, asyncId);
    return;
  }
  isOwn(cell, asyncId, triggerAsyncId, type === 'PROMISE' || type === 'Timeout' ||
    type === 'Immediate' ? cell.quietTimers : cell.quietRequests);
}

// What has ended is forgotten: a resource destroyed (a timer or an immediate that ran or was
// cleared, a request done, a handle closed, a promise collected) makes nothing more. Kept,
// the ids of a chain of a million immediates a second filled the worker's heap while a cell
// waited, and it died with the session's state (a review). A promise is forgotten when it
// is collected, not when it settles: a `then` or an `await` of a settled promise is still
// made by it.
function forget(asyncId) {
  const cell = waitingCell;
  if (cell === null) return;
  SetDelete(cell.own, asyncId);
  SetDelete(cell.background, asyncId);
  SetDelete(cell.others, asyncId);
}

// An async wrap's id (a request's, a handle's), or -1.
function wrapId(wrap) {
  try {
    return wrap && typeof wrap.getAsyncId === 'function' ? wrap.getAsyncId() : -1;
  } catch (err) {
    return -1;
  }
}

// Whether anything of the cell's own is left: its timers (the new ones looked at once, from
// the front of each list to the newest seen: a timer goes to the front of its list when it
// starts, an interval again each time it runs, and each sets _idleStart), immediates,
// requests and handles. `batch`: the immediates after the one running (a look's own), which
// Node has taken out of its queue to run in this turn.
function cellWorkLeft(cell, batch = null) {
  const { timerListMap, kRefed, immediateQueue, timeoutInfo } = leftWork;
  // The held timers still pending (not fired, cleared or unref'd since), and the cell's
  // unref'd ones that were ref'd since.
  const held = cell.held;
  let kept = 0;
  for (let i = 0; i < held.length; i++) {
    const t = held[i];
    if (t._idleNext && !t._destroyed && t[kRefed] === true) held[kept++] = t;
    else if (t._idleNext && !t._destroyed) cell.idle[cell.idle.length] = t;
  }
  const ended = kept < held.length;
  held.length = kept;
  const idle = cell.idle;
  let idleKept = 0;
  for (let i = 0; i < idle.length; i++) {
    const t = idle[i];
    if (!t._idleNext || t._destroyed) continue;
    if (t[kRefed] === true) held[held.length] = t;
    else idle[idleKept++] = t;
  }
  idle.length = idleKept;
  // The lists are read again only when a timer may have started: the count of ref'd timers
  // changed, or one of the cell's own ended (its callback may have started the next). A
  // background timeout that ended while a callback of the cell's started one is missed.
  const count = timeoutInfo[0];
  const walk = count !== cell.timers || ended;
  cell.timers = count;
  let steps = 0;
  for (const duration in walk ? timerListMap : null) {
    const list = timerListMap[duration];
    const seen = WeakMapGet(timersSeen, list);
    const stop = seen !== undefined && seen.timer._idleNext &&
      seen.timer._idleStart === seen.start ? seen.timer : list;
    let newest = null;
    for (let t = list._idleNext; t && t !== list && t !== stop; t = t._idleNext) {
      if (++steps > MAX_TIMER_STEPS) break;
      if (newest === null) newest = t;
      if (WeakSetHas(cell.looked, t)) continue; // (a list read whole again)
      WeakSetAdd(cell.looked, t);
      if (!isOwnTimer(cell, t)) continue;
      if (t[kRefed] === true) held[held.length] = t;
      else idle[idle.length] = t;
    }
    if (newest !== null) {
      WeakMapSet(timersSeen, list, frame({ timer: newest, start: newest._idleStart }));
    }
  }
  if (held.length > 0) return true;
  for (let i = immediateQueue.head; i; i = i._idleNext) {
    if (i[kRefed] === true && isOwnTimer(cell, i)) return true;
  }
  for (let i = batch; i; i = i._idleNext) {
    if (i[kRefed] === true && isOwnTimer(cell, i)) return true;
  }
  let left = false;
  const requests = leftWork.activeRequests(process);
  for (let i = 0; i < requests.length; i++) {
    // (Not the close of a FileHandle that fs.promises.readFile leaves behind it: nothing
    // waits for that, and it ends with no callback.)
    const request = requests[i];
    if (request && request.constructor && request.constructor.name === 'FileHandleCloseReq') {
      continue;
    }
    const id = wrapId(request);
    if (id < 0 || isOwn(cell, id, -1, cell.quietRequests)) left = true;
  }
  const handles = refHandles();
  for (let i = 0; i < handles.length; i++) {
    const h = handles[i];
    try {
      if (WeakSetHas(cell.handles, h)) continue;
      if (runsOn(h)) {
        markServer(cell, h);
        continue;
      }
      const id = wrapId(h._handle);
      // Made by other work (an earlier cell's, a client of a server's), not by the cell's own
      // background work (a child its interval spawned holds it, as it holds a program).
      if (SetHas(cell.others, id)) continue;
      // Its own: what its callbacks make is the cell's too.
      if (id >= cell.firstId) SetAdd(cell.own, id);
      left = true;
    } catch (err) {
      left = true; // the user's object: it holds the cell
    }
  }
  return left;
}

// A server runs on, and so do the connections it accepts and what they make: requests that
// other work made to a server of the cell's (an earlier cell's client) held the cell (a
// review). What else the server makes (its 'listening' callback) is the cell's, as before.
function markServer(cell, h) {
  if (h instanceof net.Server) SetAdd(cell.servers, wrapId(h._handle));
}

function refImmediatePending() {
  const { immediateQueue, kRefed } = leftWork;
  for (let i = immediateQueue.head; i; i = i._idleNext) {
    if (i[kRefed] === true) return true;
  }
  return false;
}

// While a cell waits: a look once each callback has returned, in the check phase of the same
// turn of the loop. Not after the look's own immediate, nor while an immediate is pending
// (a chain of them would be looked at each turn, and a look reads each timer list). Some
// work ends with no callback (the close fs.promises.readFile leaves running, a promise's
// request no one awaits): a look every LOOK_EVERY_MS as well, while the cell waits.
const LOOK_EVERY_MS = 10;
let waitingCell = null;
let lookImmediate = null;
let lookImmediateId = -1;

function lookAfterCallback(asyncId) {
  if (waitingCell === null || lookImmediate !== null || asyncId === lookImmediateId ||
      refImmediatePending()) {
    return;
  }
  lookImmediate = setImmediate(lookNow);
  lookImmediateId = lookImmediate[leftWork.asyncIdOf];
}

function lookNow() {
  // As an immediate, the look runs in a batch Node took out of its queue: the immediates
  // queued behind it are not in the queue any more. Unseen, a cell's immediate that a
  // promise's callback queued (after two `await`s in an immediate's callback, or an `await`
  // of a promise an immediate resolves, in a loop) was missed, and the cell ended before it.
  // (Any look's immediate, not only the newest: the interval's look may have come between.)
  const batch = this !== null && typeof this === 'object' && this._onImmediate === lookNow
    ? this._idleNext : null;
  if (this === lookImmediate) lookImmediate = null;
  if (waitingCell !== null && !cellWorkLeft(waitingCell, batch) && cancelLeftWork) {
    cancelLeftWork();
  }
}

// An interrupt that came after the cell's code and before its wait (while Node reported the
// rejections it left).
let interruptPending = false;

// Waits for the work the cell left; 'interrupted' when an interrupt ended the wait.
async function awaitLeftWork(cell) {
  if (cell === null) return 'done';
  // Work a callback the cell queued with process.nextTick starts (a stream opens its file).
  await new Promise((resolve) => nextTick(resolve));
  if (interruptPending) return 'interrupted';
  // What was made from the cell's start until now, when the cell awaited nothing (`alone`:
  // no other work's callback could run meanwhile, only the cell's code, its ticks and its
  // promises' callbacks), is the cell's own whoever Node says made it: a timer a tick or a
  // promise's callback made (an event emitted on the next tick, a stream piped, an
  // un-awaited async function's first steps) was taken for background work when an earlier
  // cell's timeout was pending, and its output came in a later cell (a review).
  cell.waitFrom = leftWork.newAsyncId();
  if (!cellWorkLeft(cell)) return 'done';
  // The cell's servers, before any connection comes (a look that finds a timer of the
  // cell's stops before the handles).
  const handles = refHandles();
  for (let i = 0; i < handles.length; i++) {
    try {
      markServer(cell, handles[i]);
    } catch (err) {
      /* the user's object */
    }
  }
  let interrupted = false;
  let everyFew = null;
  try {
    await new Promise((resolve) => {
      cancelLeftWork = resolve;
      cancelWait = () => {
        interrupted = true;
        resolve();
      };
      waitingCell = cell;
      everyFew = setInterval(lookNow, LOOK_EVERY_MS);
      leftWork.waitHooks.enable();
    });
  } finally {
    clearInterval(everyFew);
    try {
      leftWork.waitHooks.disable();
    } catch (err) {
      /* the user broke async_hooks: the hook stays, and does nothing without a cell */
    }
    waitingCell = null;
    if (lookImmediate !== null) clearImmediate(lookImmediate);
    lookImmediate = null;
    cancelLeftWork = null;
    cancelWait = null;
  }
  return interrupted ? 'interrupted' : 'done';
}

// `process.exitCode = 1` is how a script fails without cutting its output short (linters
// prefer it to process.exit(1)), and what node:test sets when a test fails: a cell that sets
// it ends with status error and that code, as `node script.js` does. It is taken (cleared)
// at the cell's end, so that it neither carries into later cells nor becomes the
// interpreter's own exit code. Taken as an integer; its exit status is that modulo 256. Set
// by other work while a cell runs (a server an earlier cell started), it is that cell's.
function takeExitCode() {
  let code;
  try {
    code = process.exitCode;
    process.exitCode = undefined;
  } catch (err) {
    return 0; /* the user's accessor */
  }
  const n = typeof code === 'string' && code !== '' ? +code : code;
  return typeof n === 'number' && n === n ? n | 0 : 0; // (NaN !== NaN)
}

// --- control channel ---------------------------------------------------------------------
const queue = [];
let busy = false;

async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length > 0) {
    const cell = ArrayPrototypeShift(queue);
    let done;
    try {
      if (cell.interrupted) {
        process.stderr.write('Interrupted\n');
        done = frame({ t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' });
      } else {
        cellFailure = null;
        cellRunning = true;
        interruptPending = false;
        takeExitCode(); // one set between cells is not this cell's
        const before = loopBefore();
        cellAwaited = false;
        done = await runCell(cell.code);
        const reported = rejectionsReported();
        if (reported) await reported;
        if (before !== null) before.alone = !cellAwaited && reported === null;
        if (done.status === 'success' && cellFailure === null &&
            await awaitLeftWork(before) === 'interrupted') {
          process.stderr.write('Interrupted\n');
          done = frame({ t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' });
        }
        if (done.status === 'interrupted') clearOwnTimers(before);
      }
    } catch (err) {
      printError(err);
      done = frame({ t: 'done', status: 'error', exit_code: 1, error: errorSummary(err) });
    } finally {
      cellRunning = false;
    }
    const exitCode = takeExitCode();
    const exitStatus = exitCode & 255;
    if (exitStatus !== 0 && done.status === 'success' && cellFailure === null) {
      done = frame({
        t: 'done', status: 'error', exit_code: exitStatus,
        error: `process.exitCode was set to ${exitCode}` +
          (exitStatus !== exitCode ? ` (exit status ${exitStatus})` : ''),
      });
    }
    if (cellFailure !== null && done.status === 'success') {
      done = frame({
        t: 'done', status: 'error', exit_code: 1,
        error: StringPrototypeSlice(cellFailure, 0, MAX_ERROR_CHARS),
      });
    }
    cellFailure = null;
    send(done);
  }
  busy = false;
}

let pending = '';
// One decoder for what the stream reads and what readControlNow reads, in the order read.
const decoder = new StringDecoder('utf8');
const ctl = new net.Socket({ fd: CTL_IN, readable: true, writable: false });
ctl.on('data', (chunk) => {
  takeControl(StringDecoderWrite(decoder, chunk));
  pump();
});

// What has come on the control pipe and the stream has not read yet, read now, while the
// event loop waits (the pipe is non-blocking: libuv made it so for the stream).
//
// Nearly always there is nothing (EAGAIN), which `fs.readSync` throws: the error it builds
// (its message, a stack of unlimited depth) cost 110 to 150 us a cell under runc, 57 us on
// the host, a sixth of a short cell's round trip. On Node 18 (the image's) the worker calls
// the binding under `readSync` as it does, with a context object that takes the error
// instead (about 20 us); that binding throws itself on later Nodes, which keep `readSync`.
const controlBuffer = Buffer.allocUnsafe(65536);
const fsBinding = process.versions.node.split('.')[0] === '18' ? binding('fs') : null;
function readControlOnce() {
  if (fsBinding !== null) {
    const ctx = {};
    const n = fsBinding.read(CTL_IN, controlBuffer, 0, controlBuffer.length, -1, undefined, ctx);
    return ctx.errno === undefined ? n : -1;
  }
  try {
    return readSync(CTL_IN, controlBuffer, 0, controlBuffer.length, null);
  } catch (err) {
    return -1;
  }
}

function readControlNow() {
  for (;;) {
    const n = readControlOnce();
    if (n <= 0) return; // nothing more (-1: EAGAIN), or the end: the stream sees it too
    takeControl(StringDecoderWrite(decoder, TypedArrayPrototypeSubarray(controlBuffer, 0, n)));
  }
}

function takeControl(text) {
  pending += text;
  let nl;
  while ((nl = StringPrototypeIndexOf(pending, '\n')) >= 0) {
    const line = StringPrototypeSlice(pending, 0, nl);
    pending = StringPrototypeSlice(pending, nl + 1);
    let msg;
    try {
      msg = JSONParse(line);
    } catch (e) {
      continue;
    }
    // Own fields only: a cell's `Object.prototype.t = 'interrupt'` is not the agent's word.
    const field = (key) => (msg !== null && typeof msg === 'object' && ObjectHasOwn(msg, key)
      ? msg[key] : undefined);
    if (field('t') === 'interrupt') {
      if (queue.length > 0) queue[queue.length - 1].interrupted = true;
      else if (cancelWait) cancelWait();
      else if (cellRunning) interruptPending = true;
      continue;
    }
    const code = field('code');
    ArrayPrototypePush(queue, frame({ code: code !== undefined ? String(code) : '', interrupted: false }));
  }
}
ctl.on('end', () => process.exit(0));
ctl.on('error', () => process.exit(0));

send(frame({ t: 'ready' }));
