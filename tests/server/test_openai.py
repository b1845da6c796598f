"""qwgpu-server driven by the official `openai` Python client: chat (stream and not), completions,
content parts, seeds, stop strings, logprobs, usage, the MTP switch, tool calls with reasoning
(on the scripted checkpoint, whose replies are known in advance) and error cases."""

import json
import re

import jsonschema
import openai
import pytest
from openai import OpenAI


def client(server):
    return OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=600)


def extra(obj, name):
    """A field the OpenAI schema does not declare (reasoning, timings...)."""
    return (obj.model_extra or {}).get(name)


def counts(usage):
    """Token counts of a usage object (cached_tokens depends on what ran before)."""
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "metric": {"type": "boolean"}},
            "required": ["city"],
        },
    },
}


# ------------------------------------------------------------------------------------------------
# The embedded default model (random weights: the text is noise, but it is deterministic)


def test_models(default_server):
    c = client(default_server)
    assert [m.id for m in c.models.list().data] == ["qwgpu-default"]
    m = c.models.retrieve("qwgpu-default")
    assert m.id == "qwgpu-default" and m.owned_by == "qwgpu"


def test_chat_non_stream_usage_and_content_parts(default_server):
    c = client(default_server)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    r = c.chat.completions.create(model=default_server.model, messages=msgs, max_tokens=4)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    ch = r.choices[0]
    assert ch.finish_reason in ("length", "stop") and ch.message.role == "assistant"
    # Thinking is on by default: the reply starts in the reasoning channel, sent under both names
    # (empty when the model closes its think block at once; then the words are content).
    reasoning = extra(ch.message, "reasoning")
    assert reasoning == extra(ch.message, "reasoning_content")
    assert reasoning or ch.message.content
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    timings = extra(r, "timings")
    assert timings["ttft_s"] > 0 and timings["total_s"] >= timings["ttft_s"]
    # The same user text as content parts gives the same prompt, so the same greedy reply.
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]
    r2 = c.chat.completions.create(model=default_server.model, messages=[msgs[0], {"role": "user", "content": parts}], max_tokens=4)
    assert extra(r2.choices[0].message, "reasoning") == reasoning
    assert r2.choices[0].message.content == ch.message.content
    assert counts(r2.usage) == counts(r.usage)
    # max_completion_tokens is accepted too.
    r3 = c.chat.completions.create(model=default_server.model, messages=msgs, max_completion_tokens=2)
    assert r3.usage.completion_tokens <= 2


def test_chat_stream_equals_non_stream(default_server):
    c = client(default_server)
    kw = dict(model=default_server.model, messages=[{"role": "user", "content": "Count: one, two,"}], max_tokens=5, extra_body=NO_THINK)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    reasoning = "".join(extra(ch.choices[0].delta, "reasoning") or "" for ch in chunks if ch.choices)
    assert content == (whole.choices[0].message.content or "")
    assert reasoning == (extra(whole.choices[0].message, "reasoning") or "")
    assert content, "with thinking off the reply is content"
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    # The usage chunk comes last, with no choices.
    assert chunks[-1].choices == [] and counts(chunks[-1].usage) == counts(whole.usage)
    assert extra(chunks[-1], "timings")["decode_tokens_per_s"] >= 0


def test_completions(default_server):
    c = client(default_server)
    kw = dict(model=default_server.model, prompt="Once upon a time", max_tokens=4)
    r = c.completions.create(**kw)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 4
    chunks = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert counts(chunks[-1].usage) == counts(r.usage)
    echoed = c.completions.create(echo=True, **kw)
    assert echoed.choices[0].text == "Once upon a time" + r.choices[0].text
    # Token ids as the prompt (byte-level ids, which every vocabulary of this family has).
    ids = c.completions.create(model=default_server.model, prompt=[39, 11, 72], max_tokens=2)
    assert ids.usage.prompt_tokens == 3


def test_same_seed_same_text(default_server):
    c = client(default_server)

    def sample(seed):
        r = c.chat.completions.create(
            model=default_server.model, messages=[{"role": "user", "content": "Pick a word."}],
            max_tokens=6, temperature=1.5, seed=seed, extra_body=NO_THINK)
        return r.choices[0].message.content

    a = sample(1234)
    assert a == sample(1234)
    assert any(sample(s) != a for s in (1, 2, 3)), "different seeds should give different samples"


def test_several_choices(default_server):
    """`n` choices: choice i is what one request with seed + i gives (each job restores the prompt's
    state from the prompt cache or prefills it again: the same bits); usage counts the prompt once
    and every completion; streamed, the choices come one after another, each with its role chunk
    and final chunk, then one usage chunk and [DONE]."""
    c = client(default_server)
    kw = dict(model=default_server.model, messages=[{"role": "user", "content": "Pick three words."}],
              max_tokens=6, temperature=1.5, extra_body=NO_THINK)
    singles = [c.chat.completions.create(seed=40 + i, **kw) for i in range(3)]
    r = c.chat.completions.create(n=3, seed=40, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.message.content for ch in r.choices] == [s.choices[0].message.content for s in singles]
    assert [ch.finish_reason for ch in r.choices] == [s.choices[0].finish_reason for s in singles]
    assert len({ch.message.content for ch in r.choices}) > 1, "different seeds should give different samples"
    assert r.usage.prompt_tokens == singles[0].usage.prompt_tokens
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert all(extra(ch, "timings")["total_s"] > 0 for ch in r.choices)

    chunks = list(c.chat.completions.create(n=2, seed=40, stream=True, stream_options={"include_usage": True}, **kw))
    assert all(ch.id == chunks[0].id for ch in chunks)
    with_choices = [ch for ch in chunks if ch.choices]
    order = [ch.choices[0].index for ch in with_choices]
    assert order == sorted(order) and set(order) == {0, 1}, "one choice after the other"
    for i in range(2):
        mine = [ch.choices[0] for ch in with_choices if ch.choices[0].index == i]
        assert mine[0].delta.role == "assistant"
        assert "".join(x.delta.content or "" for x in mine) == r.choices[i].message.content
        assert [x.finish_reason for x in mine if x.finish_reason] == [r.choices[i].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == sum(s.usage.completion_tokens for s in singles[:2])
    assert chunks[-1].usage.prompt_tokens == singles[0].usage.prompt_tokens

    # Text completions: every choice echoes the prompt when asked; streamed the same texts.
    ckw = dict(model=default_server.model, prompt="Once upon a time", max_tokens=4, temperature=1.5)
    one = [c.completions.create(seed=9 + i, **ckw).choices[0].text for i in range(2)]
    both = c.completions.create(n=2, seed=9, echo=True, **ckw)
    assert [ch.text for ch in both.choices] == ["Once upon a time" + t for t in one]
    streamed = list(c.completions.create(n=2, best_of=2, seed=9, stream=True, **ckw))
    for i in range(2):
        assert "".join(ch.choices[0].text for ch in streamed if ch.choices and ch.choices[0].index == i) == one[i]
    for bad in (dict(n=0), dict(n=17)):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(**bad, **kw)
        assert e.value.param == "n" and e.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(n=2, best_of=3, **ckw)
    assert e.value.param == "best_of"


BOOK = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 20},
        "pages": {"type": "integer", "minimum": 1, "maximum": 999},
        "topics": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
    },
    "required": ["title", "pages", "topics"],
    "additionalProperties": False,
}


def test_structured_output(default_server):
    """response_format: the reply parses and validates against the schema (jsonschema), with
    thinking off and on (the schema applies after the reasoning block), greedy and sampled, streamed
    and not; the regex extension; compile errors name the field."""
    c = client(default_server)
    msgs = [{"role": "user", "content": "Describe the Rust book as JSON."}]
    rf = {"type": "json_schema", "json_schema": {"name": "book", "schema": BOOK, "strict": True}}
    kw = dict(model=default_server.model, messages=msgs, max_tokens=300, response_format=rf)
    replies = {}
    for think in (False, True):
        r = c.chat.completions.create(extra_body={"chat_template_kwargs": {"enable_thinking": think}}, **kw)
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch.message.content
        jsonschema.validate(json.loads(ch.message.content), BOOK)
        replies[think] = ch.message.content
    # Without the format the same greedy request says something else.
    free = c.chat.completions.create(model=default_server.model, messages=msgs, max_tokens=40, extra_body=NO_THINK)
    assert free.choices[0].message.content != replies[False]
    # Streamed: the same text.
    chunks = list(c.chat.completions.create(stream=True, extra_body=NO_THINK, **kw))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == replies[False]
    # Speculative decoding under the format (MTP on or off per request): the same greedy reply,
    # and drafts were made.
    on = c.chat.completions.create(extra_body={**NO_THINK, "mtp": True}, **kw)
    off = c.chat.completions.create(extra_body={**NO_THINK, "mtp": False}, **kw)
    assert on.choices[0].message.content == off.choices[0].message.content == replies[False]
    assert extra(on, "timings")["mtp"]["drafted"] > 0
    assert extra(off, "timings")["mtp"] is None
    # Sampled, several choices: each one valid.
    r = c.chat.completions.create(n=3, seed=5, temperature=1.2, extra_body=NO_THINK, **kw)
    for ch in r.choices:
        assert ch.finish_reason == "stop", ch.message.content
        jsonschema.validate(json.loads(ch.message.content), BOOK)
    # json_object: the reply is a JSON object (or its start, when max_tokens cuts it).
    r = c.chat.completions.create(model=default_server.model, messages=msgs, max_tokens=60, response_format={"type": "json_object"}, extra_body=NO_THINK)
    text = r.choices[0].message.content
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    # The regex extension.
    rx = r"(yes|no), because [a-z ]{1,30}\."
    r = c.chat.completions.create(model=default_server.model, messages=[{"role": "user", "content": "Is Rust fast?"}],
                                  max_tokens=60, response_format={"type": "regex", "regex": rx}, extra_body=NO_THINK)
    assert re.fullmatch(rx, r.choices[0].message.content), r.choices[0].message.content
    # Text completions take it too.
    r = c.completions.create(model=default_server.model, prompt="The Rust book as JSON:", max_tokens=200,
                             extra_body={"response_format": rf})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), BOOK)
    # Errors name the field.
    for bad, param in (
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}, "response_format.json_schema.schema"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "regex", "regex": "(unclosed"}, "response_format.regex"),
        ({"type": "yaml"}, "response_format.type"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=default_server.model, messages=msgs, response_format=bad)
        assert e.value.param == param, (bad, e.value.message)


VOLUME_TOOL = {
    "type": "function",
    "function": {
        "name": "set_volume",
        "description": "Set the speaker volume.",
        "parameters": {
            "type": "object",
            "properties": {"level": {"type": "integer", "minimum": 0, "maximum": 10},
                           "unit": {"type": "string", "enum": ["percent", "steps"]}},
            "required": ["level"],
        },
    },
}
MODE_TOOL = {
    "type": "function",
    "function": {
        "name": "set_mode",
        "description": "Switch the speaker mode.",
        "parameters": {"type": "object", "properties": {"mode": {"type": "string", "enum": ["quiet", "party"]}},
                       "required": ["mode"]},
    },
}


def test_tool_choice_required_makes_a_call(default_server):
    """tool_choice "required" or a named function constrains the reply to tool calls in the Qwen
    format: the call names an allowed function and its arguments validate against that function's
    parameter schema (jsonschema), even from a model that would not call on its own."""
    c = client(default_server)
    msgs = [{"role": "user", "content": "Make it louder."}]
    tools = [VOLUME_TOOL, MODE_TOOL]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    free = c.chat.completions.create(model=default_server.model, messages=msgs, tools=tools, max_tokens=40, extra_body=NO_THINK)
    assert free.choices[0].finish_reason != "tool_calls", "the default model does not call on its own"
    for choice, allowed in (("required", {"set_volume", "set_mode"}),
                            ({"type": "function", "function": {"name": "set_mode"}}, {"set_mode"})):
        for think in (False, True):
            r = c.chat.completions.create(model=default_server.model, messages=msgs, tools=tools, tool_choice=choice,
                                          parallel_tool_calls=False, max_tokens=300,
                                          extra_body={"chat_template_kwargs": {"enable_thinking": think}})
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls", (choice, think, ch.message)
            assert len(ch.message.tool_calls) == 1
            call = ch.message.tool_calls[0]
            assert call.function.name in allowed
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=default_server.model, messages=msgs, tools=tools, tool_choice="required",
                                  response_format={"type": "json_object"})
    assert e.value.param == "response_format"


def test_logprobs(default_server):
    c = client(default_server)
    kw = dict(model=default_server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True, top_logprobs=3)
    r = c.chat.completions.create(**kw)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert isinstance(e.token, str) and e.logprob <= 0 and e.bytes
        try:
            assert bytes(e.bytes).decode("utf-8") == e.token
        except UnicodeDecodeError:
            pass  # part of a character: the token string is the lossy decoding
        assert len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert e.logprob == pytest.approx(lps[0]) and e.token == e.top_logprobs[0].token
    streamed = list(c.chat.completions.create(stream=True, **kw))
    lp = [e for ch in streamed if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [e.token for e in lp] == [e.token for e in entries]
    cr = c.completions.create(model=default_server.model, prompt="The sky is", max_tokens=3, logprobs=2)
    lpc = cr.choices[0].logprobs
    assert len(lpc.tokens) == len(lpc.token_logprobs) == len(lpc.top_logprobs) == cr.usage.completion_tokens
    assert all(len(t) <= 2 for t in lpc.top_logprobs) and lpc.text_offset[0] == 0


def test_mtp_switch(default_server):
    c = client(default_server)
    kw = dict(model=default_server.model, messages=[{"role": "user", "content": "Say something."}], max_tokens=6)
    on = c.chat.completions.create(extra_body={"mtp": True}, **kw)
    off = c.chat.completions.create(extra_body={"mtp": False}, **kw)
    # Speculative decoding gives exactly the greedy reply.
    assert extra(on.choices[0].message, "reasoning") == extra(off.choices[0].message, "reasoning")
    assert counts(on.usage) == counts(off.usage)
    assert extra(on, "timings")["mtp"]["drafted"] > 0
    assert extra(off, "timings")["mtp"] is None
    assert default_server.metric("qwgpu_mtp_drafted_total") > 0
    # Streamed, the chunks carry the running counts (an extension field the client keeps as extra):
    # never decreasing, the last equal to the final timings.
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, extra_body={"mtp": True}, **kw))
    running = [(m["drafted"], m["accepted"]) for m in (extra(ch, "mtp") for ch in chunks) if m]
    assert running
    assert all(x[0] <= y[0] and x[1] <= y[1] for x, y in zip(running, running[1:]))
    final = extra(chunks[-1], "timings")["mtp"]
    assert running[-1] == (final["drafted"], final["accepted"])
    assert all(extra(ch, "mtp") is None for ch in c.chat.completions.create(stream=True, extra_body={"mtp": False}, **kw))


def test_conversation_reuses_the_prompt_cache(default_server):
    # A conversation's second request starts with the first one's prompt up to its last message:
    # the server restores that state (usage.prompt_tokens_details.cached_tokens) and the reply is
    # the same as when it is asked again.
    c = client(default_server)
    kw = dict(model=default_server.model, max_tokens=4, extra_body=NO_THINK)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    first = c.chat.completions.create(messages=msgs, **kw)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content or ""},
             {"role": "user", "content": "And another one?"}]
    second = c.chat.completions.create(messages=msgs, **kw)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # (all of the first prompt but its generation prompt, which the template renders differently
    # once the reply is history)
    assert 0 < cached < first.usage.prompt_tokens, (cached, first.usage)
    again = c.chat.completions.create(messages=msgs, **kw)
    assert again.choices[0].message.content == second.choices[0].message.content
    assert again.usage.prompt_tokens_details.cached_tokens > cached


def test_new_conversations_share_the_system_prompt_state(default_server):
    # A long system prompt: the first conversation records the state just before its user message
    # as well as after its messages, and a new conversation with the same system prompt restores
    # it (cached_tokens covers the system prompt, not the new user message; with speculation, as
    # on this server, too). Asked again, that conversation takes its own entry and gives the
    # same reply.
    c = client(default_server)
    kw = dict(model=default_server.model, max_tokens=4, extra_body=NO_THINK)
    system = {"role": "system", "content": "You answer questions about colours and animals in one careful word. " * 4}
    first = [system, {"role": "user", "content": "Name a colour."}]
    c.chat.completions.create(messages=first, **kw)
    new = [system, {"role": "user", "content": "Which animal is the largest?"}]
    b = c.chat.completions.create(messages=new, **kw)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert 32 <= cached < b.usage.prompt_tokens - 5, (cached, b.usage)
    again = c.chat.completions.create(messages=new, **kw)
    assert again.usage.prompt_tokens_details.cached_tokens > cached
    assert again.choices[0].message.content == b.choices[0].message.content


def test_prompt_cache_dir_keeps_states_across_a_restart(tmp_path):
    # --prompt-cache-dir: the states are written at shutdown and restored at start, so a new
    # conversation with the same long system prompt after a restart starts from the cache. A file
    # that is not a state (or belongs to no model here) is left out, not fatal.
    from conftest import Server
    d = tmp_path / "states"
    args = ["--max-context", "512", "--prompt-cache-dir", str(d)]
    system = {"role": "system", "content": "You answer questions about colours and animals in one careful word. " * 4}
    s = Server(args, "prompt-cache-dir")
    try:
        kw = dict(model=s.model, max_tokens=4, extra_body=NO_THINK)
        first = client(s).chat.completions.create(messages=[system, {"role": "user", "content": "Name a colour."}], **kw)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
    finally:
        assert s.stop() == 0
    files = sorted(p.name for p in d.iterdir())
    assert len(files) == 2 and all(f.endswith(".state") for f in files), files
    (d / files[0]).with_name(files[0].replace("-0.", "-3.")).write_bytes(b"not a state")
    s = Server(args, "prompt-cache-dir again")
    try:
        kw = dict(model=s.model, max_tokens=4, extra_body=NO_THINK)
        new = [system, {"role": "user", "content": "Which animal is the largest?"}]
        b = client(s).chat.completions.create(messages=new, **kw)
        assert 32 <= b.usage.prompt_tokens_details.cached_tokens < b.usage.prompt_tokens - 5, b.usage
    finally:
        assert s.stop() == 0


def test_batched_requests_answer_as_alone(default_server):
    # --batch 2: requests sent together decode together (one forward call per step for both),
    # each answer equal to the one the server gives it alone: greedy, sampled with a seed,
    # streamed or not.
    from concurrent.futures import ThreadPoolExecutor
    from conftest import Server
    questions = ["Name a colour.", "Which animal is the largest?", "Count to three.",
                 "What is a borrow checker?", "Say hello.", "Name a river."]

    def ask(server, i):
        kw = dict(model=server.model, max_tokens=6 + i % 3,
                  messages=[{"role": "user", "content": questions[i]}],
                  extra_body={"mtp": False, **(NO_THINK if i % 2 else {})})
        if i % 4 == 1:
            kw.update(temperature=0.9, top_p=0.95, seed=100 + i, presence_penalty=0.5)
        c = client(server)
        if i % 3 == 0:
            parts = [(extra(ch.choices[0].delta, "reasoning") or "", ch.choices[0].delta.content or "")
                     for ch in c.chat.completions.create(stream=True, **kw) if ch.choices]
            return ("".join(r for r, _ in parts), "".join(t for _, t in parts))
        r = c.chat.completions.create(**kw)
        return (extra(r.choices[0].message, "reasoning_content") or "", r.choices[0].message.content or "",
                r.usage.completion_tokens)

    alone = [ask(default_server, i) for i in range(len(questions))]
    s = Server(["--max-context", "512", "--batch", "2", "--prompt-cache-entries", "0"], "batch")
    try:
        for _ in range(2):
            with ThreadPoolExecutor(len(questions)) as pool:
                together = list(pool.map(lambda i: ask(s, i), range(len(questions))))
            assert together == alone
        assert s.metric('qwgpu_batch_steps_total{streams="2"}') > 0
    finally:
        assert s.stop() == 0


def test_errors(default_server):
    c = client(default_server)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=default_server.model, messages=msgs, temperature=5)
    assert e.value.status_code == 400 and e.value.param == "temperature" and e.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=default_server.model, messages=msgs, extra_body={"top_k": "many"})
    assert e.value.param == "top_k" and e.value.code == "invalid_type"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=default_server.model, messages=msgs, stream=True, top_p=1.5)
    assert e.value.param == "top_p"
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=msgs)
    assert e.value.code == "model_not_found" and "gpt-4o" in e.value.message
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="x")
    # The context holds 512 tokens: a longer prompt is refused before any GPU work.
    before = default_server.metric("qwgpu_prompt_tokens_total")
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=default_server.model, messages=[{"role": "user", "content": "lorem ipsum " * 400}])
    assert e.value.code == "context_length_exceeded" and "512" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=default_server.model, prompt="lorem ipsum " * 400)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert default_server.metric("qwgpu_prompt_tokens_total") == before


def test_metrics_after_requests(default_server):
    text = default_server.get("/metrics")
    for name in ("qwgpu_requests_total", "qwgpu_prompt_tokens_total", "qwgpu_generation_tokens_total",
                 "qwgpu_decode_tokens_per_second", "qwgpu_time_to_first_token_seconds_count",
                 "qwgpu_mtp_acceptance_ratio", "qwgpu_queue_depth"):
        assert name in text, name
    assert default_server.metric("qwgpu_generation_tokens_total") > 0
    assert default_server.metric("qwgpu_time_to_first_token_seconds_count") > 0
    assert default_server.metric("qwgpu_decode_tokens_per_second") > 0


# ------------------------------------------------------------------------------------------------
# The scripted checkpoint: a reasoning block then a tool call (thinking prompt), or a plain answer
# (non-thinking prompt)


def test_tool_call_stream(scripted_server, scripted):
    c = client(scripted_server)
    stream = c.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True})
    reasoning, reasoning_content, content, calls, finish, usage = "", "", "", {}, None, None
    for ch in stream:
        if ch.usage:
            usage = ch.usage
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        reasoning += extra(d, "reasoning") or ""
        reasoning_content += extra(d, "reasoning_content") or ""
        content += d.content or ""
        for t in d.tool_calls or []:
            call = calls.setdefault(t.index, {"id": None, "type": None, "name": "", "arguments": ""})
            if t.id:
                call["id"], call["type"] = t.id, t.type
            if t.function and t.function.name:
                call["name"] += t.function.name
            if t.function and t.function.arguments:
                call["arguments"] += t.function.arguments
        finish = ch.choices[0].finish_reason or finish
    assert reasoning == scripted["reasoning"] and reasoning_content == reasoning
    assert content == ""
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["type"] == "function" and call["name"] == "get_weather"
    # Typed by the tool's schema: "true" became a boolean.
    assert json.loads(call["arguments"]) == {"city": "Paris", "metric": True}
    assert finish == "tool_calls"
    assert usage.completion_tokens == len(scripted["thinking_reply_ids"]) - 1  # EOS is not counted


def test_tool_call_round_trip(scripted_server, scripted):
    c = client(scripted_server)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    r = c.chat.completions.create(model="scripted", messages=[question], tools=[WEATHER_TOOL])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.content is None
    assert extra(ch.message, "reasoning") == scripted["reasoning"]
    (call,) = ch.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == scripted["tool_call"]["arguments"]
    # The call and its result go back as history; the answer (non-thinking prompt) is plain content.
    history = [question, ch.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})}]
    r2 = c.chat.completions.create(model="scripted", messages=history, tools=[WEATHER_TOOL], extra_body=NO_THINK)
    assert r2.choices[0].message.content == scripted["answer"]
    assert r2.choices[0].message.tool_calls is None and r2.choices[0].finish_reason == "stop"
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens


def test_stop_strings(scripted_server, scripted):
    c = client(scripted_server)
    kw = dict(model="scripted", messages=[{"role": "user", "content": "How is the weather?"}], extra_body=NO_THINK)
    r = c.chat.completions.create(stop=[" STOP", "never appears"], **kw)
    assert r.choices[0].message.content == "Sunny and 21 degrees!" and r.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(stop="21", stream=True, **kw))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Sunny and "
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]
    # A raw completion that continues the same scripted path (the prompt ends with "\n\n").
    cr = c.completions.create(model="scripted", prompt=[248045, 271], stop=["!"], max_tokens=40)
    assert cr.choices[0].text == "Sunny and 21 degrees" and cr.choices[0].finish_reason == "stop"
    whole = c.completions.create(model="scripted", prompt=[248045, 271], max_tokens=40)
    assert whole.choices[0].text == scripted["answer"] and whole.choices[0].finish_reason == "stop"
    cut = c.completions.create(model="scripted", prompt=[248045, 271], max_tokens=3)
    assert scripted["answer"].startswith(cut.choices[0].text) and cut.choices[0].finish_reason == "length"
