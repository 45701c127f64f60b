// Load driver for bench/bench_yjs.py: many stock Yjs editors (y-websocket WebsocketProvider) in
// this one process, typing into their rooms; prints one JSON line with what it measured.
//
//   node bench.mjs '<json config>'
//
// Config: {"mode": "load" | "join", "base": "ws://127.0.0.1:8000", "rooms": [{"ws": id, "doc": id,
// "tokens": [token per client]}], "window": 4, "rate": 0 (total updates/s, 0: as fast as the
// window allows), "warmupS": 1, "durationS": 5, "timeoutS": 60, "deflate": false, "inserts": 0}.
// With "inserts" > 0 every writer sends exactly that many updates and all of them are measured
// (warmupS and durationS are unused); the run ends once every update reached a peer.
//
// load: every client is a writer. Each update inserts one token `|w.n.t|` into the "content"
// text at the writer's own cursor (w writer, n its counter, t the send time in microseconds of
// the monotonic clock). Receivers parse tokens from remote text deltas: latency = receive time - t, per
// receiving client. A writer keeps at most `window` updates that no other client of its room
// has received yet (y-websocket has no acks, so "received by a peer" stands in for one).
// join: one client per room entry; reports the time from creating the provider to `synced` and
// its text holding `expectLength` characters (config, default 0).
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const cfg = JSON.parse(process.argv[2])
process.setMaxListeners(0) // every provider listens for the process's exit

// permessage-deflate (browsers negotiate it) only with "deflate": true: compressing every
// message costs both sides far more than the rest of the work here.
class BenchWebSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, { perMessageDeflate: cfg.deflate === true })
  }
}
const nowUs = () => Number(process.hrtime.bigint() / 1000n)
const TOKEN = /\|(\d+)\.(\d+)\.(\d+)\|/g

const connect = (room, token) => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`${cfg.base}/yjs/${room.ws}`, room.doc, doc, {
    params: { token }, WebSocketPolyfill: BenchWebSocket, disableBc: true, maxBackoffTime: 1000
  })
  const closes = []
  const client = { doc, text: doc.getText('content'), provider, closes, extensions: '' }
  provider.on('connection-close', (e) => closes.push(e ? `${e.code} ${e.reason}` : 'local'))
  provider.on('status', (e) => { if (e.status === 'connected') client.extensions = provider.ws.extensions })
  return client
}

const untilSynced = (clients, timeoutS) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`not synced within ${timeoutS}s`)), timeoutS * 1000)
  const check = () => {
    if (clients.every((c) => c.provider.synced)) { clearTimeout(timer); resolve() }
  }
  for (const c of clients) c.provider.on('sync', check)
  check()
})

const finish = (result, clients) => {
  for (const c of clients) c.provider.destroy()
  // Exit once the pipe took it all: a result of many latencies outgrows the pipe's buffer.
  process.stdout.write(JSON.stringify(result) + '\n', () => setTimeout(() => process.exit(0), 100))
}

async function join () {
  const out = []
  for (const room of cfg.rooms) {
    const t0 = nowUs()
    const client = connect(room, room.tokens[0])
    await untilSynced([client], cfg.timeoutS)
    // A server may answer the sync before its document is loaded (the reference server's
    // persistence loads it asynchronously, then sends it as an update): until it is all there.
    const deadline = nowUs() + cfg.timeoutS * 1e6
    while (client.text.length < (cfg.expectLength ?? 0) && nowUs() < deadline) await new Promise((resolve) => setImmediate(resolve))
    out.push({ ms: (nowUs() - t0) / 1000, length: client.text.length, closes: client.closes })
    client.provider.destroy()
  }
  finish({ joins: out }, [])
}

async function load () {
  const clients = []
  const writers = []
  for (const [r, room] of cfg.rooms.entries()) {
    const members = room.tokens.map((token) => connect(room, token))
    for (const [k, c] of members.entries()) {
      c.room = r
      c.writer = writers.length
      writers.push({ client: c, sent: 0, inflight: 0, seen: new Set() })
      clients.push(c)
    }
  }
  const setupStart = nowUs()
  await untilSynced(clients, cfg.timeoutS)
  const setupMs = (nowUs() - setupStart) / 1000

  const counted = cfg.inserts > 0
  const start = nowUs() + 200_000
  const measureFrom = counted ? start : start + cfg.warmupS * 1e6
  const stopAt = counted ? Infinity : measureFrom + cfg.durationS * 1e6
  let lastFirst = start // when the latest update first reached a peer
  const latencies = [] // ms, per (update, receiving client), for updates sent in the window
  let firstReceived = 0 // updates first received by a peer inside the window
  let sent = 0
  let running = true
  const canSend = (w) => running && (!counted || w.sent < cfg.inserts)

  const send = (w) => {
    const c = w.client
    // Type at this writer's own cursor, right after its previous token (as a person types at
    // their caret): appends at one shared end would make every update conflict with all the
    // concurrent ones, and Yjs resolves such conflicts in time linear in their number.
    const index = w.cursor ? Y.createAbsolutePositionFromRelativePosition(w.cursor, c.doc).index : c.text.length
    const token = `|${c.writer}.${w.sent}.${nowUs()}|`
    c.text.insert(index, token)
    w.cursor = Y.createRelativePositionFromTypeIndex(c.text, index + token.length, -1)
    w.sent++
    w.inflight++
    sent++
  }
  for (const c of clients) {
    c.text.observe((event) => {
      if (event.transaction.local) return
      const at = nowUs()
      for (const part of event.delta) {
        if (typeof part.insert !== 'string') continue
        for (const m of part.insert.matchAll(TOKEN)) {
          const [wi, n, t] = [Number(m[1]), Number(m[2]), Number(m[3])]
          if (t >= measureFrom && t < stopAt) latencies.push((at - t) / 1000)
          const w = writers[wi]
          if (!w.seen.has(n)) { // the first peer to get it: the update went through
            w.seen.add(n)
            w.inflight--
            if (at >= measureFrom && at < stopAt) firstReceived++
            lastFirst = at
            if (!cfg.rate && running) setImmediate(() => { if (canSend(w) && w.inflight < cfg.window) send(w) })
          }
        }
      }
    })
  }

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, (start - nowUs()) / 1000)))
  if (cfg.rate) {
    // Paced: each writer sends at rate/writers, phases spread evenly.
    const period = writers.length / cfg.rate * 1000
    writers.forEach((w, i) => setTimeout(() => {
      const tick = setInterval(() => { if (canSend(w)) send(w); else clearInterval(tick) }, period)
    }, period * i / writers.length))
  } else {
    for (const w of writers) for (let i = 0; i < cfg.window && canSend(w); i++) send(w)
  }
  if (counted) {
    const deadline = nowUs() + cfg.timeoutS * 1e6
    while (nowUs() < deadline && !writers.every((w) => w.seen.size === cfg.inserts)) await new Promise((resolve) => setTimeout(resolve, 20))
  } else {
    await new Promise((resolve) => setTimeout(resolve, (stopAt - nowUs()) / 1000))
  }
  running = false
  // Drain: wait (bounded) until every update sent reached every other client of its room.
  const drainDeadline = nowUs() + 20e6
  const expected = () => clients.every((c) => c.text.length === clients.find((o) => o.room === c.room && o !== c)?.text.length)
  while (nowUs() < drainDeadline && !expected()) await new Promise((resolve) => setTimeout(resolve, 50))
  const lengths = new Map()
  for (const c of clients) lengths.set(c.room, (lengths.get(c.room) ?? new Set()).add(c.text.length))
  finish({
    setupMs,
    sent,
    updatesPerS: counted ? firstReceived / ((lastFirst - start) / 1e6) : firstReceived / cfg.durationS,
    latencies,
    converged: [...lengths.values()].every((s) => s.size === 1),
    closes: clients.flatMap((c) => c.closes),
    deflate: clients.some((c) => c.extensions.includes('permessage-deflate')) // as negotiated
  }, clients)
}

(cfg.mode === 'join' ? join() : load()).catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + '\n')
  process.exit(1)
})
