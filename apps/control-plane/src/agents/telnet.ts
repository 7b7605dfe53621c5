/**
 * The framing between the control plane and a host agent's terminal (`POST
 * /v1/vms/{id}/terminal`): the guest's busybox telnetd speaks telnet (RFC 854) on it. Only what
 * a terminal needs: data bytes, 0xFF doubled; the window size as NAWS (RFC 1073); every option
 * negotiation and subnegotiation from the guest is dropped (it asks, we never answer, and it
 * goes on in its defaults: echo and line editing by the guest's shell).
 */
const IAC = 0xff;
const SB = 0xfa;
const SE = 0xf0;
const NAWS = 0x1f;

/** Terminal input as telnet data: 0xFF doubled. UTF-8 never contains 0xFF, other bytes pass. */
export function telnetData(input: Uint8Array): Buffer {
  const buf = Buffer.from(input);
  if (!buf.includes(IAC)) return buf;
  const out: number[] = [];
  for (const b of buf) {
    out.push(b);
    if (b === IAC) out.push(IAC);
  }
  return Buffer.from(out);
}

/** IAC SB NAWS <cols> <rows> IAC SE, each size two bytes big-endian (0xFF doubled). */
export function telnetWindowSize(cols: number, rows: number): Buffer {
  const size = [cols >> 8, cols & 0xff, rows >> 8, rows & 0xff].flatMap((b) =>
    b === IAC ? [IAC, IAC] : [b],
  );
  return Buffer.from([IAC, SB, NAWS, ...size, IAC, SE]);
}

/**
 * Strips telnet commands from the guest's output, across chunk boundaries. Holds at most the
 * state of one command in progress (a subnegotiation's bytes are skipped, not kept), so a
 * hostile guest cannot grow it.
 */
export class TelnetDecoder {
  #state: 'data' | 'iac' | 'option' | 'sb' | 'sb-iac' = 'data';

  push(chunk: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(chunk.length);
    let n = 0;
    for (const b of chunk) {
      switch (this.#state) {
        case 'data':
          if (b === IAC) this.#state = 'iac';
          else out[n++] = b;
          break;
        case 'iac':
          if (b === IAC) {
            out[n++] = IAC;
            this.#state = 'data';
          } else if (b === SB) this.#state = 'sb';
          // WILL, WONT, DO, DONT carry one option byte; any other command is one byte.
          else this.#state = b >= 0xfb ? 'option' : 'data';
          break;
        case 'option':
          this.#state = 'data';
          break;
        case 'sb':
          if (b === IAC) this.#state = 'sb-iac';
          break;
        case 'sb-iac':
          this.#state = b === SE ? 'data' : 'sb';
          break;
      }
    }
    return out.subarray(0, n);
  }
}
