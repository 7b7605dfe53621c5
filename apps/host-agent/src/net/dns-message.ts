/**
 * What the VMs' DNS forwarder lets through: a standard query (opcode QUERY, one question of
 * class IN, at most an EDNS OPT record) for an ordinary record type. Everything a resolver of a
 * workload never needs, and which turns a relay into a tool against the upstream or the zones
 * behind it, is refused here: UPDATE and NOTIFY, zone transfers (AXFR, IXFR), ANY and the other
 * meta types, multi-question and answer-carrying messages. Pure functions on the wire bytes.
 */

/** Largest query relayed (UDP or TCP): one question (a name is at most 255 bytes) plus an OPT record. */
export const MAX_QUERY_BYTES = 512;
const HEADER = 12;
const CLASS_IN = 1;
const TYPE_OPT = 41;

export type QueryVerdict =
  /** Relay it. `name` is lowercase, without the trailing dot. */
  | { kind: 'query'; name: string; type: number; question: Buffer }
  /** Answer REFUSED; `question` is the question section to echo, when it could be read. */
  | { kind: 'refuse'; reason: string; question?: Buffer }
  /** Not a query at all (too short, too long, a response): no answer. */
  | { kind: 'drop'; reason: string };

/**
 * Record types a query may not ask for: 0 (reserved), OPT (a pseudo-record), and 128-255, the
 * range RFC 6895 reserves for query and meta types (TKEY, TSIG, IXFR, AXFR, MAILB, MAILA, ANY).
 */
export function refusedType(type: number): boolean {
  return type === 0 || type === TYPE_OPT || (type >= 128 && type <= 255);
}

/** The question's name and where the question section ends, or why it cannot be read. */
function readQuestion(msg: Buffer): { name: string; end: number } | string {
  const labels: string[] = [];
  let i = HEADER;
  let length = 1;
  for (;;) {
    if (i >= msg.length) return 'truncated name';
    const n = msg[i]!;
    if (n === 0) break;
    // No compression in a question that is the first thing after the header.
    if (n > 63) return 'compressed or oversized label';
    length += n + 1;
    if (length > 255 || i + 1 + n > msg.length) return 'name too long';
    labels.push(msg.subarray(i + 1, i + 1 + n).toString('latin1'));
    i += n + 1;
  }
  const end = i + 5;
  if (end > msg.length) return 'truncated question';
  return { name: labels.join('.').toLowerCase(), end };
}

/** An EDNS OPT record with the root name, exactly filling what is left of the message. */
function isOptRecord(msg: Buffer, at: number): boolean {
  if (at + 11 > msg.length || msg[at] !== 0 || msg.readUInt16BE(at + 1) !== TYPE_OPT) return false;
  return at + 11 + msg.readUInt16BE(at + 9) === msg.length;
}

export function checkQuery(msg: Buffer): QueryVerdict {
  if (msg.length < HEADER) return { kind: 'drop', reason: 'shorter than a header' };
  if (msg.length > MAX_QUERY_BYTES) return { kind: 'drop', reason: 'too long for a query' };
  const flags = msg.readUInt16BE(2);
  // Answering a response could bounce between two resolvers forever.
  if (flags & 0x8000) return { kind: 'drop', reason: 'a response' };
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { kind: 'refuse', reason: `opcode ${opcode}` };
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((o) => msg.readUInt16BE(o));
  if (qd !== 1 || an !== 0 || ns !== 0 || ar! > 1)
    return { kind: 'refuse', reason: 'not exactly one question' };
  const q = readQuestion(msg);
  if (typeof q === 'string') return { kind: 'refuse', reason: q };
  const question = msg.subarray(HEADER, q.end);
  const type = msg.readUInt16BE(q.end - 4);
  const qclass = msg.readUInt16BE(q.end - 2);
  if (qclass !== CLASS_IN) return { kind: 'refuse', reason: `class ${qclass}`, question };
  if (refusedType(type)) return { kind: 'refuse', reason: `type ${type}`, question };
  if (ar === 1 ? !isOptRecord(msg, q.end) : q.end !== msg.length) {
    return { kind: 'refuse', reason: 'extra records', question };
  }
  return { kind: 'query', name: q.name, type, question };
}

/** A REFUSED answer to `query` (whose header is at least 12 bytes), echoing the question if given. */
export function refusedReply(query: Buffer, question?: Buffer): Buffer {
  const header = Buffer.alloc(HEADER);
  query.copy(header, 0, 0, 2);
  // QR, the query's opcode and RD, RA; RCODE 5 (REFUSED).
  header.writeUInt16BE(0x8000 | (query.readUInt16BE(2) & 0x7900) | 0x0080 | 5, 2);
  header.writeUInt16BE(question ? 1 : 0, 4);
  return question ? Buffer.concat([header, question]) : header;
}

/** True when `name` is one of `allowed` or below one of them (`example.com` admits `a.example.com`). */
export function nameAllowed(name: string, allowed: readonly string[]): boolean {
  return allowed.some((a) => name === a || name.endsWith(`.${a}`));
}
