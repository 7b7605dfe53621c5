/** Runs in the VM: echoes each request's method, path and headers as JSON, and echoes WebSocket frames. */
export const DASHBOARD = String.raw`
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': 'app=1; Path=/' });
    res.end(JSON.stringify({ from: 'vm', method: req.method, url: req.url, headers: req.headers, body }));
  });
});
server.on('upgrade', (req, socket) => {
  const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  let buf = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15;
      let len = buf[1] & 127;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      if (buf.length < off + 4 + len) return;
      const mask = buf.subarray(off, off + 4);
      const data = Buffer.from(buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < data.length; i++) data[i] ^= mask[i % 4];
      buf = buf.subarray(off + 4 + len);
      if (op === 8) { socket.end(Buffer.from([0x88, 0])); return; }
      const head = data.length < 126 ? Buffer.from([0x80 | op, data.length])
        : Buffer.from([0x80 | op, 126, data.length >> 8, data.length & 255]);
      socket.write(Buffer.concat([head, data]));
    }
  });
});
server.listen(8080, '0.0.0.0', () => console.log('listening'));
`;
