#!/usr/bin/env node
// Compiles every contracts/*.sol with solc-js into <out>/<ContractName>.json =
// {contractName, abi, bytecode, solcVersion}. The artifacts are committed so the product and the
// tests never need a compiler; run this after editing a contract.
//
// Usage: node compile.js [--out DIR]        (default DIR: ./artifacts next to this file)
//
// Output is deterministic: sources are read in sorted order under stable relative unit names (the
// metadata hash embedded in the bytecode depends on them), and JSON is written with a fixed layout.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const HERE = __dirname;
const CONTRACTS_DIR = path.join(HERE, 'contracts');
const NODE_MODULES = path.join(HERE, 'node_modules');

function parseArgs(argv) {
  let out = path.join(HERE, 'artifacts');
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out' && i + 1 < argv.length) {
      out = path.resolve(argv[++i]);
    } else {
      throw new Error(`compile.js: unknown argument ${JSON.stringify(argv[i])} (usage: node compile.js [--out DIR])`);
    }
  }
  return { out };
}

// Imports such as "@openzeppelin/contracts/..." come from node_modules; "./X.sol" imports are
// resolved by solc itself to "contracts/X.sol", which we also serve from disk.
function findImport(unitName) {
  const candidates = [path.join(HERE, unitName), path.join(NODE_MODULES, unitName)];
  for (const file of candidates) {
    if (file.startsWith(HERE + path.sep) && fs.existsSync(file)) {
      return { contents: fs.readFileSync(file, 'utf8') };
    }
  }
  return { error: `not found: ${unitName}` };
}

function main() {
  const { out } = parseArgs(process.argv.slice(2));
  const files = fs.readdirSync(CONTRACTS_DIR).filter((f) => f.endsWith('.sol')).sort();
  if (files.length === 0) throw new Error(`compile.js: no .sol files in ${CONTRACTS_DIR}`);

  const sources = {};
  for (const f of files) {
    sources[`contracts/${f}`] = { content: fs.readFileSync(path.join(CONTRACTS_DIR, f), 'utf8') };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      // OZ 5.7 (Bytes.sol) uses mcopy, which needs cancun.
      evmVersion: 'cancun',
      optimizer: { enabled: true, runs: 200 },
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
    },
  };

  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + '\n');
  if (errors.length > 0) throw new Error(`compile.js: ${errors.length} compilation error(s)`);

  fs.mkdirSync(out, { recursive: true });
  // Start clean so a renamed or deleted contract leaves no stale artifact behind.
  for (const f of fs.readdirSync(out)) if (f.endsWith('.json')) fs.unlinkSync(path.join(out, f));

  const solcVersion = solc.version();
  const written = [];
  for (const unit of Object.keys(sources)) {
    for (const [contractName, compiled] of Object.entries(output.contracts[unit] || {}).sort()) {
      const bytecode = compiled.evm.bytecode.object;
      if (!bytecode) continue; // interfaces and abstract contracts cannot be deployed
      const artifact = { contractName, abi: compiled.abi, bytecode: '0x' + bytecode, solcVersion };
      fs.writeFileSync(path.join(out, `${contractName}.json`), JSON.stringify(artifact, null, 2) + '\n');
      written.push(contractName);
    }
  }
  process.stdout.write(`compiled ${written.join(', ')} with solc ${solcVersion} into ${out}\n`);
}

try {
  main();
} catch (err) {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}
