'use strict';
// node-postgres (`pg`) against pgdyno (or PostgreSQL directly): CLIENTS
// concurrent pg.Client connections, each doing ITERS iterations of
//   - named queries ({name, text, values}): node-pg sends Parse only on first
//     use per connection and Bind/Execute by name after that, so later uses
//     land on backends that never saw the Parse;
//   - one name with a different text in every client (names are per session);
//   - several queries queued at once (Promise.all);
//   - transactions (BEGIN / named queries / COMMIT or ROLLBACK), expected
//     errors (22012) in and out of transactions, named queries after them;
//   - per-client application_name (startup) and TimeZone (SET), checked.
// Every result is compared with the value it must have. Last line:
// `RESULT ok ...` or `RESULT fail ...`.
const { Client } = require('pg');

const env = process.env;
const CLIENTS = parseInt(env.CLIENTS || '40', 10);
const ITERS = parseInt(env.ITERS || '50', 10);
const TARGET = env.TARGET || '?';
const TZS = ['UTC', 'Europe/Paris', 'America/New_York', 'Asia/Tokyo', 'Asia/Kolkata', 'Etc/GMT+3', 'Etc/GMT-14', 'Africa/Cairo'];
const TZ_OFFSET = { UTC: 0, 'Europe/Paris': 3600, 'America/New_York': -18000, 'Asia/Tokyo': 32400, 'Asia/Kolkata': 19800, 'Etc/GMT+3': -10800, 'Etc/GMT-14': 50400, 'Africa/Cairo': 7200 };

let checks = 0;
const failures = [];

class CheckFailed extends Error {}

function check(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new CheckFailed(`${what}: got ${g}, want ${w}`);
  checks++;
}

function connect(cid) {
  return new Client({
    host: env.PGHOST || '127.0.0.1',
    port: parseInt(env.PGPORT || '5432', 10),
    user: env.PGUSER,
    password: env.PGPASSWORD,
    database: env.PGDATABASE,
    application_name: `node-${cid}`,
  });
}

const Q = {
  add: 'SELECT $1::int + $2::int AS s',
  concat: "SELECT $1::text || ':' || $2::text AS t",
  series: 'SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g',
  insert: 'INSERT INTO node_items (client_id, i, val) VALUES ($1, $2, $3)',
  count: 'SELECT count(*)::int AS n FROM node_items WHERE client_id = $1 AND i >= 0',
  countNeg: 'SELECT count(*)::int AS n FROM node_items WHERE client_id = $1 AND i = $2',
  readBack: 'SELECT val FROM node_items WHERE client_id = $1 AND i = $2',
  div: 'SELECT 1 / $1::int AS x',
  tz: "SELECT current_setting('TimeZone') AS tz, extract(timezone from '2024-01-15 12:00:00+00'::timestamptz)::int AS off",
};

function named(name, values) {
  return { name, text: Q[name], values };
}

async function clientRun(cid) {
  const c = connect(cid);
  await c.connect();
  try {
    const tz = TZS[cid % TZS.length];
    await c.query(`SET TimeZone = '${tz}'`);
    // Same name in every client, a different text in each.
    const mine = { name: 'mine', text: `SELECT $1::int * ${cid + 1} AS v` };
    for (let i = 0; i < ITERS; i++) {
      let r = await c.query(named('add', [i, cid]));
      check(r.rows[0].s, i + cid, 'named add');
      r = await c.query(named('concat', [`c${cid}`, String(i)]));
      check(r.rows[0].t, `c${cid}:${i}`, 'named concat');
      const n = (i % 5) + 1;
      r = await c.query(named('series', [cid, n]));
      check(r.rows.map((x) => [x.g, x.m]), Array.from({ length: n }, (_, k) => [k + 1, (k + 1) * cid]), 'named series');
      r = await c.query({ ...mine, values: [i] });
      check(r.rows[0].v, i * (cid + 1), 'per-client text under a shared name');

      // Queued together: node-pg sends each after the previous one's ReadyForQuery.
      const [a, b, d] = await Promise.all([
        c.query(named('add', [1, i])),
        c.query({ ...mine, values: [2] }),
        c.query(named('concat', ['x', String(cid)])),
      ]);
      check([a.rows[0].s, b.rows[0].v, d.rows[0].t], [1 + i, 2 * (cid + 1), `x:${cid}`], 'queued named queries');

      // A committed transaction.
      await c.query('BEGIN');
      r = await c.query(named('insert', [cid, i, `v${cid}-${i}`]));
      check(r.rowCount, 1, 'insert rowCount');
      r = await c.query(named('count', [cid]));
      check(r.rows[0].n, i + 1, 'count in transaction');
      await c.query('COMMIT');
      r = await c.query(named('readBack', [cid, i]));
      check(r.rows.map((x) => x.val), [`v${cid}-${i}`], 'read back after commit');

      if (i % 5 === 0) {
        await c.query('BEGIN');
        await c.query(named('insert', [cid, -1, 'rolled back']));
        r = await c.query(named('countNeg', [cid, -1]));
        check(r.rows[0].n, 1, 'uncommitted row visible');
        await c.query('ROLLBACK');
        r = await c.query(named('countNeg', [cid, -1]));
        check(r.rows[0].n, 0, 'rolled-back row gone');
      }

      if (i % 7 === 3) {
        // The statement parses fine and fails at Execute; the name stays prepared.
        for (let k = 0; k < 2; k++) {
          try {
            await c.query(named('div', [0]));
            throw new CheckFailed('1/0 did not fail');
          } catch (e) {
            if (e instanceof CheckFailed) throw e;
            check(e.code, '22012', 'SQLSTATE of 1/0');
          }
        }
        r = await c.query(named('div', [1]));
        check(r.rows[0].x, 1, 'named div after errors');
        // An error inside a transaction.
        await c.query('BEGIN');
        await c.query(named('insert', [cid, -2, 'x']));
        try {
          await c.query(named('div', [0]));
          throw new CheckFailed('1/0 in a transaction did not fail');
        } catch (e) {
          if (e instanceof CheckFailed) throw e;
          check(e.code, '22012', 'SQLSTATE of 1/0 in a transaction');
        }
        try {
          await c.query(named('add', [1, 1]));
          throw new CheckFailed('a query in an aborted transaction did not fail');
        } catch (e) {
          if (e instanceof CheckFailed) throw e;
          check(e.code, '25P02', 'SQLSTATE in an aborted transaction');
        }
        await c.query('ROLLBACK');
        r = await c.query(named('countNeg', [cid, -2]));
        check(r.rows[0].n, 0, 'row of failed transaction gone');
      }

      if (i % 10 === 9) {
        r = await c.query(named('tz', []));
        check([r.rows[0].tz, r.rows[0].off], [tz, TZ_OFFSET[tz]], 'TimeZone');
        r = await c.query('SHOW application_name');
        check(r.rows[0].application_name, `node-${cid}`, 'application_name');
      }
    }
    const r = await c.query({
      name: 'final',
      text: 'SELECT count(*)::int AS n, sum(i)::int AS s FROM node_items WHERE client_id = $1',
      values: [cid],
    });
    check([r.rows[0].n, r.rows[0].s], [ITERS, (ITERS * (ITERS - 1)) / 2], 'final rows');
  } finally {
    await c.end();
  }
}

async function main() {
  const t0 = Date.now();
  const setup = connect('setup');
  await setup.connect();
  await setup.query('DROP TABLE IF EXISTS node_items');
  await setup.query('CREATE TABLE node_items (client_id int NOT NULL, i int NOT NULL, val text NOT NULL)');
  await setup.end();

  await Promise.all(
    Array.from({ length: CLIENTS }, (_, cid) =>
      clientRun(cid).catch((e) => {
        const msg = `client ${cid}: ${e.constructor.name}: ${e.message}${e.code ? ` (SQLSTATE ${e.code})` : ''}`;
        failures.push(msg);
        console.log(`FAIL ${msg}`);
      }),
    ),
  );
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  if (failures.length) {
    console.log(`RESULT fail ${failures.length} client failure(s), ${checks} checks ok, via ${TARGET}, ${secs}s: ${failures[0].slice(0, 300)}`);
    process.exit(1);
  }
  console.log(`RESULT ok ${checks} checks, ${CLIENTS} clients x ${ITERS} iterations, via ${TARGET}, ${secs}s`);
}

main().catch((e) => {
  console.log(`RESULT fail setup: ${e.message}`);
  process.exit(1);
});
