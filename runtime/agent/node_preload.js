// Loaded first by every node a sandbox runs (the agent adds `--require` of this file to
// NODE_OPTIONS): the JavaScript worker, a `node` a cell starts, and their children and
// worker threads get the later releases' builtins (node_builtins.js) where this Node lacks
// them, as the cells do.
'use strict';
require('./node_builtins.js').install();
