#!/usr/bin/env node
// The browser build against the native engine, in headless Chromium on SwiftShader's WebGPU.
// Run through tests/browser/run.sh, which builds everything first; this file only tests:
//
// 1. the wasm size (raw and gzip) against the budget stated in web/README.md;
// 2. native reference tokens: the `qwgpu` CLI (Vulkan; lavapipe in CI) generates, for every
//    reference prompt of each fixture (tests/fixtures/models/<name>), greedy tokens plain and with
//    MTP, plus one sampled request;
// 3. the demo page (web/dist, served over HTTP) loads each fixture (?model=URL) and its worker must
//    produce exactly the same tokens through the JS API, plain and with MTP; the streamed token
//    events must equal the result; the fixture loaded again from local files (the folder picker)
//    gives the same tokens; cancel stops a generation early;
// 4. the demo with its default model answers a chat message typed into the page (reasoning,
//    tok/s and MTP acceptance shown) with the native engine's tokens for the same chat (same
//    chat template and tokenizer; its embedding split under a 4 MiB binding cap on both sides);
//    the page is saved as tests/artifacts/browser-demo.png;
// 5. the page explains a missing WebGPU; a model too big for wasm32 memory, or for the adapter's
//    storage-binding limit, is refused with a message naming the limit.
//
// Options: --fixtures a,b   --max-tokens N (tokens per reference prompt of the first fixture,
//          default 32)   --other-tokens N (of the other fixtures, default 16)
//          --chat-tokens N (default 8)   --headed
//          --all-prompts (every reference prompt for every fixture, not only the first's)
// Environment: QWGPU_BIN (the native CLI, default target/debug/qwgpu), CHROMIUM (/usr/bin/chromium).
// Timings are printed, never asserted.

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const opt = (name, d) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : d;
};
const FIXTURES = opt('--fixtures', 'mtp-perm,f32-q4-g64').split(',').filter(Boolean);
const MAX_TOKENS = Number(opt('--max-tokens', '32'));
const OTHER_TOKENS = Number(opt('--other-tokens', '16'));
// The first fixture is the full check; the others add their weight formats at fewer tokens.
const tokensOf = (name) => (FIXTURES.indexOf(name) === 0 ? MAX_TOKENS : OTHER_TOKENS);
const CHAT_TOKENS = Number(opt('--chat-tokens', '8'));
const HEADED = args.includes('--headed');
const ALL_PROMPTS = args.includes('--all-prompts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const QWGPU_BIN = process.env.QWGPU_BIN || path.join(repo, 'target/debug/qwgpu');
// WebGPU builds keep the f32 decode matmuls (no packed 8-bit dot products there); the native
// reference runs the same kernels (QWGPU_MATMUL_XQ=0), so the two do the same arithmetic.
process.env.QWGPU_MATMUL_XQ = '0';
const DIST = path.join(repo, 'web/dist');
const FIXTURE_DIR = path.join(repo, 'tests/fixtures/models');
const ARTIFACTS = path.join(repo, 'tests/artifacts');
// WebGPU is behind a flag on Linux; SwiftShader is Chromium's CPU WebGPU adapter.
const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
// A sampled request (seeded Philox draws: the same tokens on every adapter).
const SAMPLED = { temperature: 0.8, top_p: 0.95, top_k: 50, seed: 7 };

let failures = 0;
const fail = (msg) => {
  failures++;
  console.log(`FAIL ${msg}`);
};
const ok = (msg) => console.log(`ok   ${msg}`);
const t0 = Date.now();
const secs = () => ((Date.now() - t0) / 1000).toFixed(0);
const MiB = 1 << 20;

// ---- 1. size budget ----------------------------------------------------------------------------

const wasmPath = path.join(DIST, 'pkg/qwgpu_web_bg.wasm');
if (!fs.existsSync(wasmPath)) {
  console.error(`${wasmPath} is missing: run bash web/build.sh (or bash tests/browser/run.sh)`);
  process.exit(2);
}
const readme = fs.readFileSync(path.join(repo, 'web/README.md'), 'utf8');
const budget = readme.match(/Size budget: ([\d.]+) MiB raw, ([\d.]+) MiB gzip/);
if (!budget) {
  console.error('web/README.md does not state the size budget ("Size budget: X MiB raw, Y MiB gzip")');
  process.exit(2);
}
const wasm = fs.readFileSync(wasmPath);
const raw = wasm.length;
const gz = zlib.gzipSync(wasm, { level: 9 }).length;
const sizeLine =
  `wasm size: ${raw} bytes raw (${(raw / MiB).toFixed(2)} MiB), ${gz} bytes gzip -9 (${(gz / MiB).toFixed(2)} MiB); ` +
  `budget ${budget[1]} MiB raw, ${budget[2]} MiB gzip`;
if (raw > Number(budget[1]) * MiB || gz > Number(budget[2]) * MiB) fail(`${sizeLine}: over budget`);
else ok(sizeLine);

// ---- 2. native reference -------------------------------------------------------------------------

function native(dir, prompt, maxTokens, extra) {
  const argv = ['generate', '--model', dir, '--prompt-ids', prompt.join(','), '--max-tokens', String(maxTokens), '--ignore-eos', '--json', ...extra];
  let out;
  try {
    out = execFileSync(QWGPU_BIN, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    console.error(`native run failed: ${QWGPU_BIN} ${argv.join(' ')}\n${e.stderr ?? e.message}`);
    process.exit(2);
  }
  const j = JSON.parse(out.trim().split('\n').pop());
  return { tokens: j.tokens, mtp: j.mtp ?? null, device: j.device, decode: j.timings?.decode_tokens_per_s };
}
const mtpFlags = (on) => ['--mtp', on ? 'on' : 'off'];
const samplingFlags = (s) => ['--temperature', String(s.temperature), '--top-p', String(s.top_p), '--top-k', String(s.top_k), '--seed', String(s.seed)];

if (!fs.existsSync(QWGPU_BIN)) {
  console.error(`${QWGPU_BIN} is missing: cargo build -p native-cli (or set QWGPU_BIN)`);
  process.exit(2);
}
const refs = {};
let nativeDevice = null;
for (const name of FIXTURES) {
  const dir = path.join(FIXTURE_DIR, name);
  const all = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')).prompts;
  // The first fixture runs every reference prompt (1 to 301 ids: several prefill chunks); the
  // others their first two of at most 64 ids (SwiftShader runs a small model at a few tokens
  // per second, and the long prompt's chunking is the first fixture's to show).
  const prompts = FIXTURES.indexOf(name) === 0 || ALL_PROMPTS ? all : all.filter((p) => p.length <= 64).slice(0, 2);
  const n = tokensOf(name);
  const r = { prompts, plain: [], mtp: [] };
  for (const p of prompts) {
    r.plain.push(native(dir, p, n, mtpFlags(false)));
    r.mtp.push(native(dir, p, n, mtpFlags(true)));
  }
  r.sampledPlain = native(dir, prompts[1], n, [...mtpFlags(false), ...samplingFlags(SAMPLED)]);
  r.sampledMtp = native(dir, prompts[1], n, [...mtpFlags(true), ...samplingFlags(SAMPLED)]);
  nativeDevice ??= r.plain[0].device;
  refs[name] = r;
  console.log(`     native reference for ${name}: ${prompts.length} prompts × ${n} tokens, plain, MTP and sampled (${secs()} s)`);
}

// ---- static server: web/dist at /, the fixtures at /fixtures/ ---------------------------------

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
};
const server = http.createServer((req, res) => {
  const p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const [root, rel] = p.startsWith('/fixtures/') ? [FIXTURE_DIR, p.slice('/fixtures/'.length)] : [DIST, p.slice(1) || 'index.html'];
  const file = path.resolve(root, rel);
  if (!file.startsWith(root + path.sep)) {
    res.writeHead(403).end();
    return;
  }
  fs.stat(file, (err, st) => {
    if (err || !st.isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] ?? 'application/octet-stream', 'content-length': st.size, 'cache-control': 'no-store' });
    if (req.method === 'HEAD') res.end();
    else fs.createReadStream(file).pipe(res);
  });
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

// ---- 3. fixtures in the demo: the same tokens as the native engine -------------------------------

const firstDiff = (a, b) => {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
};
const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
function same(what, got, want) {
  const d = firstDiff(got, want);
  if (d < 0) return true;
  fail(`${what}: first difference at token ${d} (browser ${got[d]}, native ${want[d]}; ${got.length} vs ${want.length} tokens)`);
  return false;
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: !HEADED });
const summary = [];
let adapter = null;

async function openPage(query) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  page.setDefaultTimeout(600_000);
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/404|Failed to load resource/.test(m.text())) console.log(`  [console] ${m.text()}`);
  });
  await page.goto(`${base}/index.html${query}`);
  return page;
}

// Runs the reference requests through the demo's client (window.qwgpuDemo.client).
const runRequests = (page, prompts, n, sampled) =>
  page.evaluate(
    async ({ prompts, n, sampled }) => {
      const c = window.qwgpuDemo.client;
      const out = { plain: [], mtp: [] };
      for (const prompt_ids of prompts) {
        const streamed = [];
        const plain = await c.generate({ prompt_ids, max_tokens: n, ignore_eos: true, mtp: false }, { onToken: (e) => streamed.push(e.id) });
        const mtp = await c.generate({ prompt_ids, max_tokens: n, ignore_eos: true, mtp: true });
        out.plain.push({ tokens: plain.tokens, streamed, stats: plain.stats });
        out.mtp.push({ tokens: mtp.tokens, stats: mtp.stats });
      }
      // The last prompt again: its state (all ids but the last, MTP cache included) comes from
      // the engine's prompt cache, first for an MTP request, then for a plain one.
      const last = prompts[prompts.length - 1];
      out.againMtp = await c.generate({ prompt_ids: last, max_tokens: n, ignore_eos: true, mtp: true });
      out.againPlain = await c.generate({ prompt_ids: last, max_tokens: n, ignore_eos: true, mtp: false });
      if (sampled) {
        const req = { prompt_ids: prompts[1], max_tokens: n, ignore_eos: true, ...sampled };
        out.sampledPlain = await c.generate({ ...req, mtp: false });
        out.sampledMtp = await c.generate({ ...req, mtp: true });
      }
      return out;
    },
    { prompts, n, sampled },
  );

for (const [fi, name] of FIXTURES.entries()) {
  const ref = refs[name];
  const page = await openPage(`?model=/fixtures/${name}/`);
  const loaded = await page.evaluate(async () => {
    await window.qwgpuDemo.ready.catch(() => {});
    return { model: window.qwgpuDemo.model, adapter: window.qwgpuDemo.client?.adapter ?? null, status: document.getElementById('status').textContent };
  });
  adapter ??= loaded.adapter;
  if (!loaded.model) {
    fail(`${name}: the demo did not load it: ${loaded.status}`);
    await page.close();
    continue;
  }
  const run = await runRequests(page, ref.prompts, tokensOf(name), SAMPLED);
  let good = true;
  let accepted = 0;
  let drafted = 0;
  for (let i = 0; i < ref.prompts.length; i++) {
    const what = `${name} prompt ${i} (${ref.prompts[i].length} ids)`;
    good = same(`${what} plain`, run.plain[i].tokens, ref.plain[i].tokens) && good;
    good = same(`${what} MTP`, run.mtp[i].tokens, ref.mtp[i].tokens) && good;
    good = same(`${what} streamed token events vs result`, run.plain[i].streamed, run.plain[i].tokens) && good;
    const bm = run.mtp[i].stats.mtp;
    const nm = ref.mtp[i].mtp;
    if (!bm || !nm) {
      good = false;
      fail(`${what}: the MTP request did not use the MTP head (browser ${JSON.stringify(bm)}, native ${JSON.stringify(nm)})`);
    } else {
      if (bm.drafted !== nm.drafted || bm.accepted !== nm.accepted) {
        good = false;
        fail(`${what}: MTP drafts differ: browser ${bm.accepted}/${bm.drafted}, native ${nm.accepted}/${nm.drafted}`);
      }
      accepted += bm.accepted;
      drafted += bm.drafted;
    }
  }
  {
    const li = ref.prompts.length - 1;
    const want = ref.prompts[li].length - 1;
    good = same(`${name} last prompt again, MTP, from the prompt cache`, run.againMtp.tokens, ref.mtp[li].tokens) && good;
    good = same(`${name} last prompt again, plain, from the prompt cache`, run.againPlain.tokens, ref.plain[li].tokens) && good;
    const got = [run.againMtp.stats.cached_tokens, run.againPlain.stats.cached_tokens];
    if (got[0] !== want || got[1] !== want) {
      good = false;
      fail(`${name}: the repeated prompt restored ${JSON.stringify(got)} ids from the prompt cache, expected ${want} each`);
    }
    const bm = run.againMtp.stats.mtp;
    const nm = ref.mtp[li].mtp;
    if (!bm || bm.drafted !== nm.drafted || bm.accepted !== nm.accepted) {
      good = false;
      fail(`${name}: MTP drafts after the prompt cache: browser ${JSON.stringify(bm)}, native ${JSON.stringify(nm)}`);
    }
  }
  good = same(`${name} sampled ${JSON.stringify(SAMPLED)} plain`, run.sampledPlain.tokens, ref.sampledPlain.tokens) && good;
  good = same(`${name} sampled ${JSON.stringify(SAMPLED)} MTP`, run.sampledMtp.tokens, ref.sampledMtp.tokens) && good;
  if (good) {
    ok(`${name}: ${ref.prompts.length} prompts × ${tokensOf(name)} greedy tokens plain and with MTP (${accepted}/${drafted} drafts accepted), ` +
      `the last prompt again from the prompt cache, and a sampled request, identical to the native engine (${secs()} s)`);
  }
  summary.push({
    run: `${name} (prompt ids)`,
    tokens: ref.prompts.length * tokensOf(name),
    'prefill tok/s': median(run.plain.map((r) => r.stats.prefill_tokens_per_s)),
    'decode tok/s': median(run.plain.map((r) => r.stats.decode_tokens_per_s)),
    'MTP decode tok/s': median(run.mtp.map((r) => r.stats.decode_tokens_per_s)),
    'MTP accepted': `${accepted}/${drafted}`,
    'native decode tok/s': median(ref.plain.map((r) => r.decode)),
  });

  if (fi === 0) {
    // The same checkpoint from local files, as the folder picker gives them.
    await page.setInputFiles('#folder-input', path.join(FIXTURE_DIR, name));
    await page.waitForFunction(() => /^Loaded |^Could not load/.test(document.getElementById('status').textContent));
    const status = await page.textContent('#status');
    if (!/^Loaded /.test(status)) fail(`${name} from local files: ${status}`);
    else {
      const local = await runRequests(page, ref.prompts.slice(0, 2), MAX_TOKENS, null);
      let g = true;
      for (let i = 0; i < 2; i++) {
        g = same(`${name} from local files, prompt ${i} plain`, local.plain[i].tokens, ref.plain[i].tokens) && g;
        g = same(`${name} from local files, prompt ${i} MTP`, local.mtp[i].tokens, ref.mtp[i].tokens) && g;
      }
      if (g) ok(`${name} loaded from local files (the folder picker): the same tokens, plain and MTP`);
    }

    // Cancel: stop after a few streamed tokens; the request resolves early with what it has.
    const long = 10 * MAX_TOKENS;
    const c = await page.evaluate(async (long) => {
      const q = window.qwgpuDemo.client;
      let seen = 0;
      const r = await q.generate({ prompt_ids: [1, 2, 3], max_tokens: long, ignore_eos: true, mtp: false }, {
        onToken: () => {
          if (++seen === 3) q.cancel();
        },
      });
      const again = await q.generate({ prompt_ids: [1, 2, 3], max_tokens: 4, ignore_eos: true, mtp: false });
      return { n: r.tokens.length, cancelled: r.stats.cancelled, finish: r.finish_reason, again: again.tokens.length, stats: await q.stats() };
    }, long);
    if (c.cancelled && c.n >= 3 && c.n < long && c.again === 4 && c.stats.last?.generated_tokens === 4) {
      ok(`cancel: stopped after ${c.n} of ${long} tokens (finish "${c.finish}"); the next request runs normally; stats() reports it`);
    } else fail(`cancel: ${JSON.stringify({ ...c, stats: undefined })}`);
  }
  await page.close();
}

// ---- 4. the demo with the default model: a chat reply, screenshot ------------------------------

// Every storage binding is capped at MAX_BINDING bytes, as on a browser with a low binding limit
// (a matrix above it is split into row chunks; the default model's largest, the 8,192-row
// embedding and lm_head, are 1.5 MiB, so they fit here).
const MAX_BINDING = 4 << 20;
const CHAT_MESSAGE = 'Hello! What can you do in a browser tab?';
const nativeChat = (() => {
  const argv = ['generate', '--model', path.join(repo, 'models/default'), '--max-tokens', String(CHAT_TOKENS), '--mtp', 'auto', '--json', CHAT_MESSAGE];
  try {
    const out = execFileSync(QWGPU_BIN, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QWGPU_MAX_BINDING: String(MAX_BINDING) } });
    return JSON.parse(out.trim().split('\n').pop());
  } catch (e) {
    console.error(`native run failed: ${QWGPU_BIN} ${argv.join(' ')}\n${e.stderr ?? e.message}`);
    process.exit(2);
  }
})();

{
  const page = await openPage(`?max_binding=${MAX_BINDING}`);
  await page.evaluate(() => window.qwgpuDemo.ready.catch(() => {}));
  const model = await page.evaluate(() => window.qwgpuDemo.model);
  if (!model?.tokenizer) {
    fail(`the demo did not load the default model with its tokenizer: ${await page.textContent('#status')}`);
  } else {
    await page.click('#settings summary');
    await page.fill('#max-tokens', String(CHAT_TOKENS));
    await page.click('#settings summary');
    await page.fill('#input', CHAT_MESSAGE);
    await page.press('#input', 'Enter');
    await page.waitForFunction(() => /^Done:|failed/.test(document.getElementById('status').textContent));
    const status = await page.textContent('#status');
    const last = (await page.evaluate(() => window.qwgpuDemo.client.stats())).last;
    const reply = await page.evaluate(() => window.qwgpuDemo.lastReply);
    const binding = await page.evaluate(() => window.qwgpuDemo.client.adapter.max_binding_used);
    const shown = await page.evaluate(() => ({
      reasoning: document.querySelector('.msg.assistant .reasoning div')?.textContent ?? '',
      content: document.querySelector('.msg.assistant .content')?.textContent ?? '',
      meta: document.querySelector('.msg.assistant .meta')?.textContent ?? '',
      statsLine: document.getElementById('stats').textContent,
    }));
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'browser-demo.png');
    await page.screenshot({ path: shot });
    const shownText = shown.reasoning + shown.content;
    if (!/^Done:/.test(status) || !(last?.generated_tokens > 0)) fail(`default-model chat: ${status}`);
    else if (!shownText.length || !/tok\/s/.test(shown.statsLine) || !/MTP/.test(shown.statsLine)) fail(`default-model chat: the page shows ${JSON.stringify(shown)}`);
    else if (binding !== MAX_BINDING) fail(`default-model chat: the engine's binding cap is ${binding}, not ${MAX_BINDING}`);
    else if (reply.stats.prompt_tokens !== nativeChat.prompt_tokens) {
      fail(`default-model chat: ${reply.stats.prompt_tokens} prompt tokens in the browser, ${nativeChat.prompt_tokens} native (chat template / tokenizer differ)`);
    } else if (same('default-model chat (chat template, tokenizer, split embedding, MTP auto)', reply.tokens, nativeChat.tokens)) {
      ok(`default-model chat: ${last.generated_tokens} tokens streamed into the page (reasoning ${shown.reasoning.length} chars, ` +
        `answer ${shown.content.length} chars), the same tokens as the native chat with the same ${MAX_BINDING}-byte binding cap; ` +
        `footer "${shown.statsLine}"; screenshot ${path.relative(repo, shot)}`);
    }
    if (last) {
      summary.push({
        run: 'default model (chat)',
        tokens: last.generated_tokens,
        'prefill tok/s': last.prefill_tokens_per_s,
        'decode tok/s': last.decode_tokens_per_s,
        'MTP decode tok/s': NaN,
        'MTP accepted': last.mtp ? `${last.mtp.accepted}/${last.mtp.drafted}` : 'off',
        'native decode tok/s': nativeChat.timings?.decode_tokens_per_s,
      });
    }
  }

  // 5a. A model too big for wasm32 memory: the message names the limit.
  const big = await page.evaluate(async () => {
    const m = await import('./pkg/qwgpu_web.js');
    await m.default();
    try {
      m.checkModelSize(15.6e9);
      return 'accepted';
    } catch (e) {
      return e.message;
    }
  });
  if (/4 GiB/.test(big) && /wasm32/.test(big)) ok(`a 15.6 GB checkpoint is refused before the download: "${big.slice(0, 150)}…"`);
  else fail(`a 15.6 GB checkpoint: ${big}`);

  // 5b. A model too big for the adapter's binding limit (here a 1 MiB cap, below what the
  // default model's unsplittable buffers need, e.g. its KV cache): a clear error naming the limit.
  const tooBig = await page.evaluate(async () => {
    const { Qwgpu } = await import('./qwgpu.js');
    const q = await Qwgpu.start({ engine: { max_binding: 1 << 20 } });
    try {
      await q.loadUrl('models/default/');
      await q.generate({ prompt_ids: [1, 2, 3], max_tokens: 1 });
      return 'accepted';
    } catch (e) {
      return e.message;
    } finally {
      q.terminate();
    }
  });
  if (/allows at most 1048576 bytes/.test(tooBig)) ok(`with a 1 MiB binding limit the default model is refused: "${tooBig}"`);
  else fail(`with a 1 MiB binding limit: ${tooBig}`);
  await page.close();
}

// ---- 5c. no WebGPU: a clear message --------------------------------------------------------------

{
  const ctx = await browser.newContext();
  await ctx.addInitScript(() => {
    delete Object.getPrototypeOf(navigator).gpu;
  });
  const page = await ctx.newPage();
  await page.goto(`${base}/index.html`);
  await page.waitForFunction(() => document.getElementById('status').classList.contains('error'), null, { timeout: 60_000 });
  const msg = await page.textContent('#status');
  if (/WebGPU/.test(msg)) ok(`without WebGPU the page says: "${msg.slice(0, 100)}…"`);
  else fail(`without WebGPU: ${msg}`);
  await ctx.close();
}

await browser.close();
server.close();

console.log('');
console.log(`browser adapter: ${adapter?.description ?? '?'}; max storage binding ${adapter?.max_storage_buffer_binding_size} bytes`);
console.log(`native adapter:  ${nativeDevice}`);
console.log(`chromium: ${CHROMIUM} ${CHROMIUM_ARGS.join(' ')}`);
console.log(sizeLine);
console.log('headless tok/s:');
console.table(summary.map((s) => Object.fromEntries(Object.entries(s).map(([k, v]) => [k, typeof v === 'number' ? (Number.isFinite(v) ? Number(v.toFixed(2)) : '–') : v]))));
console.log(`${failures ? `${failures} FAILED` : 'all passed'} in ${secs()} s`);
process.exit(failures ? 1 : 0);
