// The engine's thread: a module Worker that owns the wasm module, the WebGPU device and the model,
// so the page never freezes while weights upload or tokens are generated. The page talks to it
// through qwgpu.js (postMessage). Messages in: {op, id, ...}; out: {id, type: "result" | "error" |
// "progress" | "event", ...}.

import init, { Engine, ModelFiles, checkModelSize, memoryLimits, lastPanic } from './pkg/qwgpu_web.js';

let engine = null;
let enginePromise = null;
let dead = null; // set after a panic: the module cannot be used any more
let busy = false;

const post = (m) => self.postMessage(m);

function errorMessage(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    let panic = null;
    try {
      panic = lastPanic();
    } catch (_) {
      /* the module is gone */
    }
    dead = `the engine stopped: ${panic ?? e.message}. Reload the page to start again.`;
    return dead;
  }
  if (e && typeof e === 'object' && 'message' in e) return String(e.message);
  return String(e);
}

function webgpuMissing() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return 'WebGPU is not available in this browser (navigator.gpu is missing in a worker). qwgpu needs WebGPU: ' +
      'Chrome or Edge 113+ (on Linux: chrome://flags/#enable-unsafe-webgpu and Vulkan), Safari 26+, or Firefox 141+ on Windows. ' +
      'The page must be served over https:// or from localhost.';
  }
  return null;
}

// The adapter the engine will get, asked for here first: a clear message when there is none, and
// a name for it (browsers often leave GPUAdapterInfo.description empty; vendor and architecture
// are set, e.g. "google swiftshader").
async function adapterLabel() {
  const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!a) {
    throw new Error('WebGPU is present but the browser offers no GPU adapter (the GPU may be blocklisted or WebGPU disabled; ' +
      'check chrome://gpu, or enable chrome://flags/#enable-unsafe-webgpu).');
  }
  const i = a.info ?? {};
  return [i.description || [i.vendor, i.architecture].filter(Boolean).join(' '), a.info?.isFallbackAdapter ? '(fallback adapter)' : '']
    .filter(Boolean)
    .join(' ') || 'WebGPU adapter';
}

function ensureEngine(options) {
  enginePromise ??= (async () => {
    const missing = webgpuMissing();
    if (missing) throw new Error(missing);
    const adapter_label = await adapterLabel();
    await init();
    engine = await Engine.create({ adapter_label, ...(options ?? {}) });
    return engine;
  })().catch((e) => {
    enginePromise = null;
    throw e;
  });
  return enginePromise;
}

// Streams `stream` (a ReadableStream of bytes) into `files` as `name`; never holds the file twice.
async function streamInto(files, name, stream, size, onBytes) {
  files.begin(name, size);
  const reader = stream.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      files.push(value);
      onBytes(value.length);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
  files.end();
}

// Engine.load takes ownership of a ModelFiles; one that was not handed over (an error before)
// is freed here at once, since its bytes live in wasm memory that the JS GC does not see.
function freeUnlessConsumed(files) {
  if (files.__wbg_ptr) files.free();
}

const isShard = (n) => n.startsWith('model') && n.endsWith('.safetensors');

// Byte progress over the files of one load.
function downloadProgress(id, expectedTotal) {
  let done = 0;
  let total = expectedTotal || 0;
  return {
    addTotal(n) {
      if (!expectedTotal) total += n;
    },
    file(name, fileDone, fileSize, delta) {
      done += delta;
      post({ id, type: 'progress', progress: { phase: 'download', file: name, file_done: fileDone, file_total: fileSize, done, total } });
    },
  };
}

async function fetchOk(url, optional) {
  const r = await fetch(url);
  if (r.ok) return r;
  if (optional && r.status >= 400 && r.status < 500) return null;
  throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`);
}

// The size a response announces, or 0 when it is compressed in transit (the body is larger).
function announcedSize(r) {
  const enc = r.headers.get('content-encoding');
  if (enc && enc !== 'identity') return 0;
  return Number(r.headers.get('content-length')) || 0;
}

async function loadFromUrl(id, base, options) {
  const baseUrl = new URL(base.endsWith('/') ? base : base + '/', self.location.href);
  const url = (n) => new URL(n, baseUrl).href;
  const files = new ModelFiles();
  try {
    const cfg = await fetchOk(url('config.json'), true);
    if (!cfg) throw new Error(`no config.json at ${url('config.json')}: is ${baseUrl.href} an MLX checkpoint directory?`);
    files.setText('config.json', await cfg.text());
    let hasTemplate = false;
    for (const name of ['generation_config.json', 'tokenizer_config.json']) {
      const r = await fetchOk(url(name), true);
      if (!r) continue;
      const text = await r.text();
      if (name === 'tokenizer_config.json') {
        try {
          hasTemplate = JSON.parse(text).chat_template != null;
        } catch (_) {
          /* the engine reports the malformed file */
        }
      }
      files.setText(name, text);
    }
    let shards = ['model.safetensors'];
    let total = 0;
    const index = await fetchOk(url('model.safetensors.index.json'), true);
    if (index) {
      const text = await index.text();
      files.setText('model.safetensors.index.json', text);
      const j = JSON.parse(text);
      shards = [...new Set(Object.values(j.weight_map ?? {}))].sort();
      total = Number(j.metadata?.total_size) || 0;
      if (total) checkModelSize(total);
    }
    const progress = downloadProgress(id, 0);
    const tok = await fetchOk(url('tokenizer.json'), true);
    if (tok) {
      if (!hasTemplate) {
        const t = await fetchOk(url('chat_template.jinja'), true);
        if (t) files.setText('chat_template.jinja', await t.text());
      }
      const size = announcedSize(tok);
      progress.addTotal(size);
      let d = 0;
      await streamInto(files, 'tokenizer.json', tok.body, size, (n) => progress.file('tokenizer.json', (d += n), size, n));
    }
    for (const shard of shards) {
      const r = await fetchOk(url(shard), false);
      const size = announcedSize(r);
      progress.addTotal(size);
      let d = 0;
      await streamInto(files, shard, r.body, size, (n) => progress.file(shard, (d += n), size, n));
    }
    const name = options?.name ?? decodeURIComponent(baseUrl.pathname.replace(/\/$/, '').split('/').pop() || 'model');
    return await finishLoad(id, files, { ...options, name });
  } finally {
    freeUnlessConsumed(files);
  }
}

async function loadFromFiles(id, list, options) {
  const byName = new Map();
  for (const f of list) byName.set(f.name, f);
  if (!byName.has('config.json')) throw new Error('the chosen files have no config.json: choose an MLX checkpoint folder');
  const shards = [...byName.keys()].filter(isShard).sort();
  if (!shards.length) throw new Error('the chosen files have no model*.safetensors');
  const total = shards.reduce((s, n) => s + byName.get(n).size, 0);
  checkModelSize(total);
  const files = new ModelFiles();
  try {
    for (const name of ['config.json', 'generation_config.json', 'tokenizer_config.json', 'model.safetensors.index.json', 'chat_template.jinja', 'chat_template.json']) {
      if (byName.has(name)) files.setText(name, await byName.get(name).text());
    }
    const big = ['tokenizer.json', 'tokenizer.json.gz', ...shards].filter((n) => byName.has(n));
    const progress = downloadProgress(id, big.reduce((s, n) => s + byName.get(n).size, 0));
    for (const name of big) {
      const f = byName.get(name);
      let d = 0;
      await streamInto(files, name, f.stream(), f.size, (n) => progress.file(name, (d += n), f.size, n));
    }
    return await finishLoad(id, files, { name: options?.name ?? 'local model', ...options });
  } finally {
    freeUnlessConsumed(files);
  }
}

async function finishLoad(id, files, options) {
  const opts = { name: options.name, max_context: options.maxContext ?? options.max_context, prefill_chunk: options.prefillChunk ?? options.prefill_chunk, kv_cache: options.kvCache ?? options.kv_cache };
  // `load` consumes `files` (its bytes are freed once the weights are on the GPU).
  return await engine.load(files, opts, (p) => post({ id, type: 'progress', progress: p }));
}

async function handle(msg) {
  const { op, id } = msg;
  switch (op) {
    case 'init': {
      await ensureEngine(msg.options);
      return { adapter: engine.adapter(), limits: memoryLimits() };
    }
    case 'load': {
      await ensureEngine();
      if (msg.source.url) return await loadFromUrl(id, msg.source.url, msg.options ?? {});
      if (msg.source.files) return await loadFromFiles(id, msg.source.files, msg.options ?? {});
      throw new Error('load: give source.url or source.files');
    }
    case 'generate': {
      await ensureEngine();
      return await engine.generate(msg.request, (event) => {
        post({ id, type: 'event', event });
      });
    }
    case 'tokenize': {
      await ensureEngine();
      return Array.from(engine.tokenize(msg.request));
    }
    case 'stats': {
      await ensureEngine();
      return { adapter: engine.adapter(), model: engine.model(), last: engine.stats(), limits: memoryLimits() };
    }
    default:
      throw new Error(`unknown op '${op}'`);
  }
}

self.onmessage = async (e) => {
  const msg = e.data;
  if (msg.op === 'cancel') {
    engine?.cancel();
    return;
  }
  if (dead) {
    post({ id: msg.id, type: 'error', error: dead });
    return;
  }
  if (busy && msg.op !== 'stats') {
    post({ id: msg.id, type: 'error', error: 'the engine is busy with another request (cancel it first)' });
    return;
  }
  const exclusive = msg.op !== 'stats';
  if (exclusive) busy = true;
  try {
    const value = await handle(msg);
    post({ id: msg.id, type: 'result', value });
  } catch (err) {
    post({ id: msg.id, type: 'error', error: errorMessage(err) });
  } finally {
    if (exclusive) busy = false;
  }
};
