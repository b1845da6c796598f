// The embedded chat UI in headless Chromium against the real qwgpu-server (default model): the
// page loads offline from the binary, a message sent with Enter streams back, settings apply,
// the conversation survives a reload, Esc stops a reply, the markdown renderer escapes HTML.
// Saves tests/artifacts/server-ui.png.
//
// Needs the server binary (QWGPU_SERVER_BIN, default target/debug/qwgpu-server) and Chromium
// (CHROMIUM, default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SERVER = process.env.QWGPU_SERVER_BIN || path.join(repo, 'target/debug/qwgpu-server');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = path.join(repo, 'tests/artifacts/server-ui.png');

let server, url, browser, page;

before(async () => {
  server = spawn(SERVER, ['--port', '0', '--max-context', '512'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { XDG_RUNTIME_DIR: '/tmp', ...process.env },
  });
  url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server did not start')), 300_000);
    server.on('exit', (code) => reject(new Error(`the server exited with ${code}`)));
    readline.createInterface({ input: server.stdout }).on('line', (line) => {
      if (line.startsWith('listening on ')) {
        clearTimeout(timer);
        resolve(line.slice('listening on '.length).trim());
      }
    });
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
  // Nothing but the server itself may be contacted.
  await context.route('**/*', (route) => (route.request().url().startsWith(url) ? route.continue() : route.abort()));
  page = await context.newPage();
  page.on('pageerror', (e) => console.log('page error:', e.message));
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.on('exit', resolve));
    server.kill('SIGTERM');
    const code = await exited;
    assert.equal(code, 0, 'the server should exit 0 on SIGTERM');
  }
});

const assistantText = () => page.locator('.msg.assistant .content').last().innerText();

test('the page loads from the server alone', async () => {
  const failed = [];
  page.on('requestfailed', (r) => failed.push(r.url()));
  await page.goto(url + '/');
  await assert.doesNotReject(page.locator('#model-name', { hasText: 'qwgpu-default' }).waitFor({ timeout: 30_000 }));
  assert.equal(await page.title(), 'qwgpu chat');
  // The device line comes from /health, fetched after /v1/models: wait for it too.
  await assert.doesNotReject(page.locator('#device', { hasText: /llvmpipe|Vulkan|Metal|DX12|GL/i }).waitFor({ timeout: 30_000 }));
  assert.deepEqual(failed, []);
});

test('a message sent with Enter streams back', async () => {
  // Settings: thinking off (the reply is content), a short reply.
  await page.click('#open-settings');
  await page.uncheck('#set-thinking');
  await page.fill('#set-max-tokens', '12');
  await page.locator('#set-max-tokens').dispatchEvent('change');
  await page.click('#close-settings');
  const input = page.locator('#input');
  await input.click();
  // Shift+Enter adds a line instead of sending.
  await input.type('Hello');
  await input.press('Shift+Enter');
  await input.type('who are you?');
  assert.equal(await input.inputValue(), 'Hello\nwho are you?');
  assert.equal(await page.locator('.msg').count(), 0);
  const sent = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
  await input.press('Enter');
  const body = JSON.parse((await sent).postData());
  assert.equal(body.stream, true);
  assert.equal(body.max_tokens, 12);
  assert.deepEqual(body.chat_template_kwargs, { enable_thinking: false });
  assert.deepEqual(body.messages.at(-1), { role: 'user', content: 'Hello\nwho are you?' });
  // Watch the reply grow while the stop button is shown.
  const lengths = new Set();
  const live = new Set();
  await page.locator('#stop').waitFor({ state: 'visible' });
  while (await page.locator('#stop').isVisible()) {
    const n = (await assistantText()).length;
    if (n > 0) lengths.add(n);
    live.add(await page.locator('#live-stats').innerText());
    await page.waitForTimeout(50);
  }
  const final = await assistantText();
  assert.ok(final.trim().length > 0, 'the reply is empty');
  assert.ok(lengths.size >= 2, `the reply did not stream (lengths seen: ${[...lengths]})`);
  // With MTP on, the running acceptance shows while the reply streams.
  if (body.mtp) assert.ok([...live].some((t) => /tok\/s · MTP \d+% \(\d+\/\d+\)/.test(t)), `no live MTP counts (seen: ${[...live]})`);
  // What the page assembled from the stream is the server's (greedy) answer to the same request,
  // asked for without streaming.
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('qwgpu.conversations.v1'))[0].messages);
  const whole = await (await fetch(url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...body, stream: false, stream_options: undefined }),
  })).json();
  assert.equal(stored.length, 2);
  assert.equal(stored[1].content, whole.choices[0].message.content);
  assert.equal(stored[1].usage.completion_tokens, whole.usage.completion_tokens);
  assert.equal(stored[1].finish, whole.choices[0].finish_reason);
  await assert.doesNotReject(page.locator('.msg.assistant .stats', { hasText: 'tok/s' }).waitFor({ timeout: 5_000 }));
  assert.match(await page.locator('#live-stats').innerText(), /tok\/s/);
  assert.equal(await page.locator('.msg.user .content').innerText(), 'Hello\nwho are you?');
  // Copy button.
  await page.locator('.msg.assistant').hover();
  await page.locator('.msg.assistant .copy-msg').click();
  await page.locator('.msg.assistant .copy-msg', { hasText: 'Copied' }).waitFor({ timeout: 5_000 });
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT });
});

test('the conversation and settings survive a reload', async () => {
  const before = await assistantText();
  await page.reload();
  await page.locator('.msg.assistant').waitFor();
  assert.equal(await assistantText(), before);
  assert.equal(await page.locator('#conversations li').count(), 1);
  assert.match(await page.locator('#conversations li').innerText(), /Hello/);
  await page.click('#open-settings');
  assert.equal(await page.isChecked('#set-thinking'), false);
  assert.equal(await page.inputValue('#set-max-tokens'), '12');
  await page.click('#close-settings');
});

test('Esc stops a reply and the server cancels it', async () => {
  await page.click('#open-settings');
  await page.fill('#set-max-tokens', '400');
  await page.locator('#set-max-tokens').dispatchEvent('change');
  await page.click('#close-settings');
  await page.fill('#input', 'Tell me a long story.');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => {
    const all = document.querySelectorAll('.msg.assistant .content');
    return all.length === 2 && all[1].textContent.length > 0;
  }, null, { timeout: 120_000 });
  await page.keyboard.press('Escape');
  await page.locator('#stop').waitFor({ state: 'hidden', timeout: 10_000 });
  assert.equal(await page.locator('#live-stats').innerText(), 'stopped');
  // The server notices the closed connection before its next token.
  const deadline = Date.now() + 30_000;
  let cancelled = 0;
  while (Date.now() < deadline) {
    const m = (await (await fetch(url + '/metrics')).text()).match(/^qwgpu_generations_cancelled_total (\d+)/m);
    cancelled = Number(m[1]);
    if (cancelled > 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(cancelled, 1);
  const health = await (await fetch(url + '/health')).json();
  assert.equal(health.busy, false);
});

test('the markdown renderer escapes HTML', async () => {
  const html = await page.evaluate(() =>
    renderMarkdown('<img src=x onerror=alert(1)> **bold** *it* `<b>` [ok](https://example.com) [bad](javascript:alert(1))\n\n```js\nlet a = "<script>";\n```\n- one\n- two'),
  );
  assert.ok(!html.includes('<img') && !html.includes('<script>') && !html.includes('<b>'), html);
  assert.ok(html.includes('&lt;img src=x onerror=alert(1)&gt;'), html);
  assert.ok(html.includes('<strong>bold</strong>') && html.includes('<em>it</em>'), html);
  assert.ok(html.includes('<code>&lt;b&gt;</code>'), html);
  assert.ok(html.includes('<a href="https://example.com"'), html);
  assert.ok(!html.includes('href="javascript'), html);
  assert.ok(html.includes('<pre data-lang="js"><code>let a = &quot;&lt;script&gt;&quot;;</code></pre>'), html);
  assert.ok(html.includes('<ul><li>one</li><li>two</li></ul>'), html);
});
