// JavaScript worker for the ws_sandbox agent: one persistent `vm` context, REPL-like cells.
//
// Started by the agent as `node worker_node.js CTL_IN CTL_OUT`. Cells arrive on CTL_IN as JSON
// lines {"code": "..."}; the worker answers on CTL_OUT with JSON lines `ready`, `display`,
// `done`. stdout/stderr are pipes, which Node writes synchronously on Linux, so everything a
// cell printed is in the pipe before its `done` is written.
'use strict';

const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { Console } = require('console');
const { createRequire } = require('module');

const CTL_IN = Number(process.argv[2]);
const CTL_OUT = Number(process.argv[3]);
const MAX_REPR_CHARS = 100000;
const WORKER_FILE = __filename;

function send(obj) {
  try {
    fs.writeSync(CTL_OUT, JSON.stringify(obj) + '\n');
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

// --- the user's context ------------------------------------------------------------------
const userConsole = new Console({ stdout: process.stdout, stderr: process.stderr });
const sandbox = {
  console: userConsole,
  require: createRequire(path.join(process.cwd(), '[cell]')),
  module: { exports: {} },
  process,
  Buffer,
};
for (const name of [
  'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate',
  'clearImmediate', 'queueMicrotask', 'structuredClone', 'URL', 'URLSearchParams',
  'TextEncoder', 'TextDecoder', 'AbortController', 'AbortSignal', 'Event', 'EventTarget',
  'atob', 'btoa', 'performance', 'fetch', 'crypto', 'Blob', 'MessageChannel',
]) {
  if (name in globalThis) sandbox[name] = globalThis[name];
}
const context = vm.createContext(sandbox, { name: 'ws_sandbox' });
sandbox.global = vm.runInContext('globalThis', context);

// --- errors ------------------------------------------------------------------------------
function userStack(err) {
  if (err instanceof Error || (err && typeof err.stack === 'string')) {
    const lines = String(err.stack).split('\n');
    // Drop frames of this worker and of Node's internals: the user did not write them.
    const kept = lines.filter(
      (l) => !(/^\s+at /.test(l) && (l.includes(WORKER_FILE) || /\(node:|at node:/.test(l))),
    );
    return kept.join('\n');
  }
  return 'Uncaught ' + util.inspect(err);
}

function errorSummary(err) {
  if (err && typeof err === 'object' && 'name' in err && 'message' in err) {
    return `${err.name}: ${err.message}`;
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

process.on('uncaughtException', (err) => printError(err));
process.on('unhandledRejection', (reason) => printError(reason));

// --- interrupts --------------------------------------------------------------------------
// While a script runs synchronously, `breakOnSigint` turns SIGINT into an exception. While the
// worker awaits a cell's promise, this handler ends the wait. When idle, SIGINT is ignored.
let cancelWait = null;
process.on('SIGINT', () => {
  if (cancelWait) cancelWait();
});

function isInterrupt(err) {
  return Boolean(err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED');
}

// --- cells -------------------------------------------------------------------------------
let cellNumber = 0;

function compile(code, filename) {
  try {
    return { script: new vm.Script(code, { filename }), wrapped: false };
  } catch (err) {
    // Top-level await: run the cell as the body of an async function. Its let/const are then
    // local to the cell and there is no value; plain assignments still persist.
    if (err instanceof SyntaxError && /\bawait\b/.test(code)) {
      try {
        const body = `(async () => {\n${code}\n})()`;
        return { script: new vm.Script(body, { filename, lineOffset: -1 }), wrapped: true };
      } catch (err2) {
        /* report the original error */
      }
    }
    throw err;
  }
}

async function runCell(code) {
  cellNumber += 1;
  const filename = `cell-${cellNumber}`;
  let value;
  let wrapped = false;
  try {
    const compiled = compile(code, filename);
    wrapped = compiled.wrapped;
    value = compiled.script.runInContext(context, { breakOnSigint: true, displayErrors: false });
    if (value !== null && (typeof value === 'object' || typeof value === 'function') &&
        typeof value.then === 'function') {
      let interrupted = false;
      const stop = new Promise((resolve) => {
        cancelWait = () => {
          interrupted = true;
          resolve();
        };
      });
      try {
        value = await Promise.race([Promise.resolve(value), stop]);
      } finally {
        cancelWait = null;
      }
      if (interrupted) {
        process.stderr.write('Interrupted\n');
        return { t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' };
      }
    }
  } catch (err) {
    if (isInterrupt(err)) {
      process.stderr.write('Interrupted\n');
      return { t: 'done', status: 'interrupted', exit_code: 130, error: 'interrupted' };
    }
    printError(err);
    return { t: 'done', status: 'error', exit_code: 1, error: errorSummary(err) };
  }
  if (value !== undefined && !wrapped) {
    let text;
    try {
      text = util.inspect(value, { colors: false });
    } catch (err) {
      text = String(value);
    }
    if (text.length > MAX_REPR_CHARS) text = text.slice(0, MAX_REPR_CHARS) + '…';
    send({ t: 'display', kind: 'execute_result', data: { 'text/plain': text } });
  }
  return { t: 'done', status: 'success', exit_code: 0, error: null };
}

// --- control channel ---------------------------------------------------------------------
const queue = [];
let busy = false;

async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length > 0) {
    const code = queue.shift();
    let done;
    try {
      done = await runCell(code);
    } catch (err) {
      printError(err);
      done = { t: 'done', status: 'error', exit_code: 1, error: errorSummary(err) };
    }
    send(done);
  }
  busy = false;
}

let pending = '';
const ctl = new net.Socket({ fd: CTL_IN, readable: true, writable: false });
ctl.setEncoding('utf8');
ctl.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      continue;
    }
    queue.push(String(msg && msg.code !== undefined ? msg.code : ''));
  }
  pump();
});
ctl.on('end', () => process.exit(0));
ctl.on('error', () => process.exit(0));

send({ t: 'ready' });
