// The demo page: loads the default model (or a user's MLX checkpoint), chats with streaming,
// shows the reasoning (collapsible), tok/s and MTP acceptance. No framework; the engine runs in a
// Worker through qwgpu.js. `window.qwgpuDemo` exposes the client for the console and for tests.
//
// URL parameters: ?model=URL  load this checkpoint directory instead of the default model
//                 ?autoload=0 do not load anything at start
//                 ?max_binding=BYTES  cap one storage binding below the adapter's limit (splits
//                                     big matrices into more chunks; for testing)

import { Qwgpu, webgpuMissingReason } from './qwgpu.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  status: $('status'),
  progress: $('progress'),
  chat: $('chat'),
  input: $('input'),
  send: $('send'),
  stop: $('stop'),
  clear: $('clear'),
  stats: $('stats'),
  adapter: $('adapter'),
  modelName: $('model-name'),
  openFolder: $('open-folder'),
  folderInput: $('folder-input'),
  loadDefault: $('load-default'),
  drop: $('drop-overlay'),
  hint: $('hint'),
};

let client = null;
let model = null;
let history = [];
let lastReply = null;
let generating = false;
let loading = false;

function setStatus(text, error = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle('error', error);
}

function setProgress(done, total) {
  if (total == null) {
    ui.progress.hidden = true;
    return;
  }
  ui.progress.hidden = false;
  ui.progress.max = total || 1;
  ui.progress.value = Math.min(done, total || 1);
}

const mib = (b) => `${(b / (1 << 20)).toFixed(1)} MiB`;
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');

function updateControls() {
  const chatOk = !!model && !!model.tokenizer && !loading;
  ui.input.disabled = !chatOk;
  ui.send.disabled = !chatOk || generating;
  ui.stop.disabled = !generating;
  ui.openFolder.disabled = loading || generating || !client;
  ui.loadDefault.disabled = loading || generating || !client;
}

function showAdapter(a) {
  const feats = [a.subgroups ? `subgroups ${a.subgroup_sizes[0]}–${a.subgroup_sizes[1]}` : 'no subgroups', a.shader_f16 ? 'f16' : 'no f16'];
  ui.adapter.textContent = `${a.name || a.vendor || 'WebGPU adapter'} (${a.backend}; ${feats.join(', ')}; binding ≤ ${mib(a.max_binding_used ?? a.max_storage_buffer_binding_size)})`;
}

function progressHandler(label) {
  return (p) => {
    if (p.phase === 'download') {
      setStatus(`Loading ${label}: ${p.file} ${mib(p.file_done)}${p.file_total ? ' / ' + mib(p.file_total) : ''}`);
      setProgress(p.done, p.total || p.done);
    } else if (p.phase === 'upload') {
      setStatus(`Uploading ${label} to the GPU: ${mib(p.done)} / ${mib(p.total)}`);
      setProgress(p.done, p.total);
    } else if (p.phase === 'session') {
      setStatus(`Preparing ${label}: building GPU pipelines…`);
    }
  };
}

function modelLoaded(m) {
  model = m;
  ui.modelName.textContent = m.name;
  ui.modelName.title = `${m.layers} layers, hidden ${m.hidden_size}, vocab ${m.vocab_size}` +
    `${m.quantization ? `, ${m.quantization.bits}-bit g${m.quantization.group_size}` : ''}, MTP ${m.mtp ? 'yes' : 'no'}, ` +
    `${mib(m.gpu_weight_bytes)} on the GPU, context ${m.max_context}`;
  setProgress(0, null);
  const notes = m.notes?.length ? ` Note: ${m.notes.join(' ')}` : '';
  if (!m.tokenizer) {
    setStatus(`Loaded ${m.name} (${mib(m.gpu_weight_bytes)} on the GPU). It has no tokenizer.json, so chat is off; ` +
      `window.qwgpuDemo.client.generate({prompt_ids: [...]}) works.${notes}`);
  } else {
    setStatus(`Loaded ${m.name}: ${m.layers} layers, ${mib(m.gpu_weight_bytes)} on the GPU, MTP ${m.mtp ? 'available' : 'not in this checkpoint'}.${notes}`);
  }
  newChat();
}

async function load(what, label) {
  if (loading || generating) return;
  loading = true;
  model = null;
  updateControls();
  setStatus(`Loading ${label}…`);
  setProgress(0, 1);
  try {
    const m = await what(progressHandler(label));
    modelLoaded(m);
    return m;
  } catch (e) {
    setProgress(0, null);
    ui.modelName.textContent = 'no model';
    setStatus(`Could not load ${label}: ${e.message}`, true);
    throw e;
  } finally {
    loading = false;
    updateControls();
  }
}

function loadUrl(url) {
  const label = decodeURIComponent(new URL(url, location.href).pathname.replace(/\/$/, '').split('/').pop() || url);
  return load((onProgress) => client.loadUrl(url, { onProgress, name: label }), label);
}

function loadFiles(name, files) {
  return load((onProgress) => client.loadFiles(files, { onProgress, name }), name);
}

/** The default model's directory: ?model=, else models/default/ next to the page, else the
 *  server's /models/default/ (qwgpu-server serves the page at /demo/ and the model there). */
async function defaultModelUrl() {
  const explicit = params.get('model');
  if (explicit) return new URL(explicit.endsWith('/') ? explicit : explicit + '/', location.href).href;
  for (const c of ['models/default/', '../models/default/', '/models/default/']) {
    const dir = new URL(c, location.href);
    try {
      const r = await fetch(new URL('config.json', dir), { method: 'HEAD', cache: 'no-store' });
      if (r.ok) return dir.href;
    } catch (_) {
      /* try the next place */
    }
  }
  return null;
}

async function loadDefault() {
  const url = await defaultModelUrl();
  if (!url) {
    setStatus('No default model found next to this page (models/default/ or /models/default/). Open a model folder instead, or pass ?model=URL.', true);
    return null;
  }
  return loadUrl(url);
}

// ---- chat ---------------------------------------------------------------------------------

function newChat() {
  history = [];
  ui.chat.replaceChildren();
  if (model && model.tokenizer) {
    const p = document.createElement('p');
    p.className = 'hint';
    p.textContent = `Chatting with ${model.name}.`;
    ui.chat.append(p);
  }
}

function bubble(role) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  const r = document.createElement('div');
  r.className = 'role';
  r.textContent = role === 'user' ? 'You' : model?.name ?? 'assistant';
  div.append(r);
  ui.chat.append(div);
  return div;
}

function scrollDown() {
  ui.chat.scrollTop = ui.chat.scrollHeight;
}

function requestOptions() {
  const num = (id, d) => {
    const v = Number($(id).value);
    return Number.isFinite(v) ? v : d;
  };
  return {
    max_tokens: Math.max(1, Math.floor(num('max-tokens', 256))),
    temperature: num('temperature', 0),
    top_p: num('top-p', 1),
    top_k: Math.max(0, Math.floor(num('top-k', 0))),
    mtp: $('mtp').value,
    enable_thinking: $('thinking').checked,
  };
}

function showStats(s) {
  const mtp = s.mtp ? `MTP ${s.mtp.accepted}/${s.mtp.drafted} drafts accepted (${fmt(100 * s.mtp.acceptance, 0)}%)` : 'MTP off';
  ui.stats.textContent = `prefill ${fmt(s.prefill_tokens_per_s)} tok/s (${s.prompt_tokens} tokens) · decode ${fmt(s.decode_tokens_per_s)} tok/s ` +
    `(${s.generated_tokens} tokens) · ${mtp}`;
}

async function send(text) {
  if (!model || !model.tokenizer || generating) throw new Error('not ready to chat');
  generating = true;
  updateControls();
  const system = $('system').value.trim();
  history.push({ role: 'user', content: text });
  const u = bubble('user');
  u.append(document.createTextNode(text));

  const b = bubble('assistant');
  const details = document.createElement('details');
  details.className = 'reasoning';
  details.hidden = true;
  const summary = document.createElement('summary');
  summary.textContent = 'Thinking…';
  const rtext = document.createElement('div');
  details.append(summary, rtext);
  const content = document.createElement('div');
  content.className = 'content';
  const meta = document.createElement('div');
  meta.className = 'meta';
  b.append(details, content, meta);
  scrollDown();

  let reasoning = '';
  let answer = '';
  const messages = system ? [{ role: 'system', content: system }, ...history] : [...history];
  setStatus('Generating…');
  try {
    const r = await client.generate({ messages, ...requestOptions() }, {
      onPromptDone: (e) => setStatus(`Prompt: ${e.prompt_tokens} tokens in ${fmt(e.ttft_s, 2)} s. Generating…`),
      onDelta: (d) => {
        // With MTP on, deltas carry the running draft counts.
        if (d.mtp && d.mtp.drafted) {
          meta.textContent = `MTP ${fmt((100 * d.mtp.accepted) / d.mtp.drafted, 0)}% (${d.mtp.accepted}/${d.mtp.drafted})`;
        }
        if (d.reasoning) {
          if (details.hidden) {
            details.hidden = false;
            details.open = true;
          }
          reasoning += d.reasoning;
          rtext.append(document.createTextNode(d.reasoning));
        }
        if (d.content) {
          if (!answer && reasoning) {
            details.open = false;
            summary.textContent = `Reasoning (${reasoning.length} characters)`;
          }
          answer += d.content;
          content.append(document.createTextNode(d.content));
        }
        scrollDown();
      },
    });
    if (reasoning && !answer) summary.textContent = 'Reasoning (the reply ended while thinking)';
    const msg = { role: 'assistant', content: r.content };
    if (r.reasoning) msg.reasoning_content = r.reasoning;
    history.push(msg);
    lastReply = r;
    showStats(r.stats);
    meta.textContent = `${r.stats.generated_tokens} tokens · ${fmt(r.stats.decode_tokens_per_s)} tok/s · ${r.finish_reason}` +
      (r.stats.cancelled ? ' (stopped)' : '');
    setStatus(`Done: ${r.stats.generated_tokens} tokens, finish reason "${r.finish_reason}".`);
    return r;
  } catch (e) {
    history.pop();
    b.classList.add('error');
    content.textContent = e.message;
    setStatus(`Generation failed: ${e.message}`, true);
    throw e;
  } finally {
    generating = false;
    updateControls();
    scrollDown();
  }
}

// ---- local folders ----------------------------------------------------------------------------

/** From [{dir, file}], the files of the shallowest directory that holds a config.json. */
function pickCheckpoint(list) {
  const dirs = list.filter((x) => x.file.name === 'config.json').map((x) => x.dir);
  if (!dirs.length) throw new Error('no config.json among these files: choose an MLX checkpoint folder');
  dirs.sort((a, b) => a.length - b.length);
  const dir = dirs[0];
  const name = dir.replace(/\/$/, '').split('/').pop() || 'local model';
  return { name, files: list.filter((x) => x.dir === dir).map((x) => x.file) };
}

async function filesFromDrop(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  const out = [];
  const walk = async (entry, dir) => {
    if (entry.isFile) {
      out.push({ dir, file: await new Promise((res, rej) => entry.file(res, rej)) });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${dir}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, '');
  if (!out.length) for (const f of dataTransfer.files) out.push({ dir: '', file: f });
  return pickCheckpoint(out);
}

function wireUi() {
  ui.openFolder.onclick = () => ui.folderInput.click();
  ui.folderInput.onchange = () => {
    const list = [...ui.folderInput.files].map((f) => ({ dir: (f.webkitRelativePath || f.name).slice(0, -f.name.length), file: f }));
    ui.folderInput.value = '';
    try {
      const c = pickCheckpoint(list);
      loadFiles(c.name, c.files).catch(() => {});
    } catch (e) {
      setStatus(e.message, true);
    }
  };
  ui.loadDefault.onclick = () => loadDefault().catch(() => {});
  let depth = 0;
  window.addEventListener('dragenter', (e) => {
    e.preventDefault();
    depth++;
    ui.drop.hidden = false;
  });
  window.addEventListener('dragleave', () => {
    if (--depth <= 0) {
      depth = 0;
      ui.drop.hidden = true;
    }
  });
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', async (e) => {
    e.preventDefault();
    depth = 0;
    ui.drop.hidden = true;
    if (!client || loading || generating) return;
    try {
      const c = await filesFromDrop(e.dataTransfer);
      await loadFiles(c.name, c.files);
    } catch (err) {
      setStatus(err.message, true);
    }
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.input.value.trim();
    if (!text || generating) return;
    ui.input.value = '';
    send(text).catch(() => {});
  });
  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  ui.stop.onclick = () => client?.cancel();
  ui.clear.onclick = () => {
    if (!generating) newChat();
  };
}

async function main() {
  wireUi();
  updateControls();
  const missing = webgpuMissingReason();
  if (missing) {
    setStatus(missing, true);
    throw new Error(missing);
  }
  setStatus('Starting the engine (WebGPU device in a worker)…');
  try {
    const engine = {};
    if (params.get('max_binding')) engine.max_binding = Number(params.get('max_binding'));
    client = await Qwgpu.start({ engine });
  } catch (e) {
    setStatus(`Could not start the engine: ${e.message}`, true);
    throw e;
  }
  window.qwgpuDemo.client = client;
  showAdapter(client.adapter);
  updateControls();
  if (params.get('autoload') === '0') {
    setStatus('Ready. Load a model.');
    return null;
  }
  return loadDefault();
}

window.qwgpuDemo = {
  client: null,
  loadUrl,
  loadFiles,
  send,
  newChat,
  get model() {
    return model;
  },
  get history() {
    return history;
  },
  /** The last chat reply as generate() resolved it (tokens, content, reasoning, stats). */
  get lastReply() {
    return lastReply;
  },
};
window.qwgpuDemo.ready = main();
window.qwgpuDemo.ready.catch(() => {});
