// qwgpu's JavaScript API for pages: the engine runs in a module Worker (worker.js); this class
// sends it requests and turns its replies into promises and callbacks.
//
//   import { Qwgpu } from './qwgpu.js';
//   const q = await Qwgpu.start();                       // WebGPU device in the worker
//   await q.loadUrl('models/default/', { onProgress });  // or q.loadFiles(fileList)
//   const r = await q.generate({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 128 },
//                              { onDelta: (d) => show(d.content, d.reasoning) });
//   r.stats.decode_tokens_per_s; q.cancel();
//
// See web/README.md for every field.

/** Why WebGPU cannot be used on this page, or null when it can (at least as far as the page knows). */
export function webgpuMissingReason() {
  if (typeof navigator === 'undefined' || !('gpu' in navigator) || !navigator.gpu) {
    return 'This browser has no WebGPU (navigator.gpu is missing), which qwgpu needs. Use Chrome or Edge 113+ ' +
      '(on Linux enable chrome://flags/#enable-unsafe-webgpu and Vulkan), Safari 26+, or Firefox 141+ on Windows; ' +
      'the page must come from https:// or localhost.';
  }
  if (typeof Worker === 'undefined') return 'This browser has no Web Workers, which qwgpu needs.';
  return null;
}

export class Qwgpu {
  /** Use Qwgpu.start(). */
  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    this.nextId = 1;
    this.adapter = null;
    this.limits = null;
    this.model = null;
    worker.onmessage = (e) => this.#onMessage(e.data);
    worker.onerror = (e) => this.#failAll(`the engine worker failed: ${e.message || 'could not load worker.js or the wasm module'}`);
    worker.onmessageerror = () => this.#failAll('a message from the engine worker could not be read');
  }

  /**
   * Starts the worker and opens the WebGPU device.
   * options: {workerUrl?: URL (default: worker.js next to this file), engine?: {max_binding?, no_subgroups?}}
   * Resolves to a Qwgpu with `.adapter` (name, backend, features, limits) and `.limits` (wasm32 memory).
   */
  static async start(options = {}) {
    const missing = webgpuMissingReason();
    if (missing) throw new Error(missing);
    const url = options.workerUrl ?? new URL('./worker.js', import.meta.url);
    const q = new Qwgpu(new Worker(url, { type: 'module' }));
    const r = await q.#call('init', { options: options.engine ?? {} });
    q.adapter = r.adapter;
    q.limits = r.limits;
    return q;
  }

  #onMessage(m) {
    const p = this.pending.get(m.id);
    if (!p) return;
    switch (m.type) {
      case 'progress':
        p.handlers.onProgress?.(m.progress);
        break;
      case 'event': {
        const h = p.handlers;
        const ev = m.event;
        h.onEvent?.(ev);
        if (ev.type === 'token') h.onToken?.(ev);
        else if (ev.type === 'delta') h.onDelta?.(ev);
        else if (ev.type === 'prompt_done') h.onPromptDone?.(ev);
        break;
      }
      case 'result':
        this.pending.delete(m.id);
        p.resolve(m.value);
        break;
      case 'error':
        this.pending.delete(m.id);
        p.reject(new Error(m.error));
        break;
    }
  }

  #failAll(message) {
    for (const p of this.pending.values()) p.reject(new Error(message));
    this.pending.clear();
  }

  #call(op, payload = {}, handlers = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, handlers });
      this.worker.postMessage({ op, id, ...payload });
    });
  }

  /**
   * Loads a checkpoint directory from a URL (config.json, generation_config.json,
   * tokenizer.json, tokenizer_config.json, model.safetensors or model.safetensors.index.json +
   * shards), streaming every file into the engine.
   * options: {name?, maxContext? (4096), prefillChunk? (512), kvCache? ("f32" | "f16"), onProgress?({phase, file?, done, total})}
   * Resolves to the model's description.
   */
  async loadUrl(url, options = {}) {
    const { onProgress, ...opts } = options;
    const abs = new URL(url, globalThis.location?.href).href;
    this.model = await this.#call('load', { source: { url: abs }, options: opts }, { onProgress });
    return this.model;
  }

  /** As loadUrl, from File objects (a folder picker's FileList or a dropped folder's files). */
  async loadFiles(files, options = {}) {
    const { onProgress, ...opts } = options;
    this.model = await this.#call('load', { source: { files: Array.from(files) }, options: opts }, { onProgress });
    return this.model;
  }

  /**
   * Generates. request: {messages | prompt | prompt_ids, max_tokens?, mtp?, ignore_eos?, stop?,
   * enable_thinking?, temperature?, top_k?, top_p?, min_p?, repetition_penalty?, presence_penalty?,
   * frequency_penalty?, logit_bias?, seed?, logprobs?, top_logprobs?}
   * handlers: {onDelta?({content, reasoning, mtp?}), onToken?({id, mtp?}), onPromptDone?({ttft_s}), onEvent?}
   * (with MTP on, mtp is the running {drafted, accepted}).
   * Resolves to {tokens, content, reasoning, tool_calls, finish_reason, stats}.
   */
  generate(request, handlers = {}) {
    return this.#call('generate', { request }, handlers);
  }

  /** The prompt ids a request would feed (chat template + tokenizer), without generating. */
  tokenize(request) {
    return this.#call('tokenize', { request });
  }

  /** Stops the running generation after the current token (its promise resolves normally). */
  cancel() {
    this.worker.postMessage({ op: 'cancel' });
  }

  /** {adapter, model, last (the last generation's stats), limits}. */
  stats() {
    return this.#call('stats');
  }

  /** Stops the worker and frees the GPU device. */
  terminate() {
    this.#failAll('the engine was terminated');
    this.worker.terminate();
  }
}
