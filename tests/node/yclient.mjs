// One stock Yjs editor for tests: a Y.Doc with y-websocket's WebsocketProvider, driven over
// stdin/stdout with one JSON object per line (tests/e2e/test_yjs.py).
//
//   node yclient.mjs <server url, e.g. ws://127.0.0.1:8000/yjs/<workspace_id>> <doc_id> <token>
//
// Events out: {"event":"status","status":...}, {"event":"synced"}, {"event":"text","text":...}
// (after every change of the "content" text), {"event":"awareness","states":{clientId: state}},
// {"event":"denied","reason":...} (y-protocols auth permission denied),
// {"event":"close","code":...,"reason":...} (every closed connection), {"event":"closed",...}
// (the server closed for good: no reconnect), {"event":"reply","id":...,...} (to a command).
// {"event":"typed","count":n} (after a "type" command).
// Commands in: {"cmd":"insert","index":n|null|"boundary","text":s} (null: at the end;
// "boundary": a random place that splits no token, i.e. the start or right after a ">"), {"cmd":"delete","index":n,"length":n},
// {"cmd":"type","text":s} (each character appended in a transaction of its own, all at once: one
// update each, as fast as the editor can), {"cmd":"awareness","state":{...}|null},
// {"cmd":"raw","b64":...} (send bytes as they are),
// {"cmd":"reconnect","token":...} (connect again with a fresh token),
// {"cmd":"disconnect"} (go offline, keeping the document: edits wait for the next connect),
// {"cmd":"state","id":...}, {"cmd":"exit"}.
import * as readline from 'node:readline'
import WebSocket from 'ws'
import * as decoding from 'lib0/decoding'
import * as Y from 'yjs'
import { WebsocketProvider, messageAuth } from 'y-websocket'

const [serverUrl, docId, token] = process.argv.slice(2)
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const doc = new Y.Doc()
const text = doc.getText('content')
const provider = new WebsocketProvider(serverUrl, docId, doc, {
  params: token ? { token } : {},
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  maxBackoffTime: 500
})

const authHandler = provider.messageHandlers[messageAuth]
provider.messageHandlers[messageAuth] = (encoder, decoder, p, emitSynced, type) => {
  // y-protocols/auth: varUint 0 (permission denied), then the reason.
  const peek = decoding.createDecoder(decoder.arr)
  peek.pos = decoder.pos
  decoding.readVarUint(peek)
  emit({ event: 'denied', reason: decoding.readVarString(peek) })
  authHandler(encoder, decoder, p, emitSynced, type)
}

provider.on('status', ({ status }) => emit({ event: 'status', status }))
provider.on('sync', (synced) => { if (synced) emit({ event: 'synced', text: text.toString() }) })
provider.on('connection-close', (event) => emit({ event: 'close', code: event?.code ?? null, reason: event?.reason ?? null }))
provider.on('closed', ({ code, reason }) => emit({ event: 'closed', code, reason }))
text.observe(() => emit({ event: 'text', text: text.toString() }))
provider.awareness.on('change', () => {
  const states = {}
  for (const [id, state] of provider.awareness.getStates()) states[id] = state
  emit({ event: 'awareness', states })
})

const boundary = () => {
  const places = [0]
  const s = text.toString()
  for (let i = 0; i < s.length; i++) if (s[i] === '>') places.push(i + 1)
  return places[Math.floor(Math.random() * places.length)]
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  switch (cmd.cmd) {
    case 'insert':
      text.insert(cmd.index === 'boundary' ? boundary() : (cmd.index ?? text.length), cmd.text)
      break
    case 'type':
      for (const ch of cmd.text) text.insert(text.length, ch)
      emit({ event: 'typed', count: cmd.text.length })
      break
    case 'delete':
      text.delete(Math.min(cmd.index, text.length), Math.max(0, Math.min(cmd.length, text.length - cmd.index)))
      break
    case 'awareness':
      provider.awareness.setLocalState(cmd.state)
      break
    case 'reconnect': // as after `closed` 4440: a fresh token, then connect again
      provider.params = { ...provider.params, token: cmd.token }
      provider.connect()
      break
    case 'disconnect':
      provider.disconnect()
      break
    case 'raw':
      provider.ws.send(Buffer.from(cmd.b64, 'base64'))
      break
    case 'state':
      emit({ event: 'reply', id: cmd.id, text: text.toString(), clientID: doc.clientID, synced: provider.synced })
      break
    case 'exit':
      provider.destroy()
      rl.close()
      setTimeout(() => process.exit(0), 50)
      break
  }
})
rl.on('close', () => { provider.destroy(); setTimeout(() => process.exit(0), 50) })
