// The PouchDB side of the benchmark: the same records fieldsync pushes, written
// to a local PouchDB (LevelDB, as on a device) with bulkDocs, replicated to
// pouchdb-server (push), then replicated from it into a fresh local database
// (pull).
//   node replicate.js RECORDS.jsonl REMOTE_URL
// Prints one JSON line: seconds and records/s of each, client peak RSS, versions.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const PouchDB = require('pouchdb');

async function main() {
  const [file, remote] = process.argv.slice(2);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pouch-bench-'));
  const local = new PouchDB(path.join(dir, 'site'));
  const docs = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => {
    const { table, record } = JSON.parse(line);
    return Object.assign({ _id: `${table}:${record.ID}`, table }, record);
  });
  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
  const tb = process.hrtime.bigint();
  for (let i = 0; i < docs.length; i += 1000) {
    await local.bulkDocs(docs.slice(i, i + 1000));
  }
  const bulkSecs = Number(process.hrtime.bigint() - tb) / 1e9;
  const t0 = process.hrtime.bigint();
  const result = await local.replicate.to(new PouchDB(remote), { batch_size: 500 });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const fresh = new PouchDB(path.join(dir, 'pulled'));
  const t1 = process.hrtime.bigint();
  const pulled = await fresh.replicate.from(new PouchDB(remote), { batch_size: 500 });
  const pullSecs = Number(process.hrtime.bigint() - t1) / 1e9;
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss);
  console.log(JSON.stringify({
    records: docs.length, docs_written: result.docs_written, secs, rps: docs.length / secs,
    bulk_secs: bulkSecs, bulk_rps: docs.length / bulkSecs,
    pull_secs: pullSecs, pull_rps: pulled.docs_written / pullSecs, pulled: pulled.docs_written,
    rss_kib: Math.round(peak / 1024), pouchdb_version: require('pouchdb/package.json').version,
    server_version: require('pouchdb-server/package.json').version, node: process.version,
  }));
  fs.rmSync(dir, { recursive: true, force: true });
}
main().catch((e) => { console.error(e); process.exit(1); });
