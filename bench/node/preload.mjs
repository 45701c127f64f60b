// Writes a document's history into a y-leveldb store, as the reference server with
// YPERSISTENCE would have stored it update by update, for bench/bench_yjs.py's cold join.
//
//   node preload.mjs <leveldb dir> <document name> <updates file>
//
// The updates file holds each update as a 4-byte big-endian length and its bytes. Run it while
// no server has the store open (LevelDB allows one process).
import { readFileSync } from 'node:fs'
import { LeveldbPersistence } from 'y-leveldb'

const [dir, docName, file] = process.argv.slice(2)
const data = readFileSync(file)
const ldb = new LeveldbPersistence(dir)
let count = 0
for (let at = 0; at < data.length;) {
  const length = data.readUInt32BE(at)
  await ldb.storeUpdate(docName, new Uint8Array(data.buffer, data.byteOffset + at + 4, length))
  at += 4 + length
  count++
}
await ldb.destroy()
process.stdout.write(JSON.stringify({ stored: count }) + '\n')
