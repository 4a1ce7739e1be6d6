//! The mock model server's scripted rules, over plain HTTP, in each wire format.

mod common;

use baton_testkit::model::ModelServer;
use common::{post, request};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn anthropic_body(messages: Value) -> Value {
    json!({"model": "claude-test", "max_tokens": 100, "stream": true,
           "system": [{"type": "text", "text": "You are Claude.\n - Primary working directory: /home/dev/ws\n"}],
           "tools": [{"name": "Write"}, {"name": "Bash"}], "messages": messages})
}

/// Concatenated text deltas of an Anthropic stream.
fn anthropic_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
        .collect()
}

#[test]
fn anthropic_text_stream_has_the_full_event_sequence() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(
        json!([{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]),
    );
    let resp = post(&server.base_url(), "/v1/messages?beta=true", &body);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.sse_events(),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data = resp.sse_data();
    assert_eq!(anthropic_text(&data), "Mock reply: hello there");
    assert_eq!(
        data[0].pointer("/message/model"),
        Some(&json!("claude-test"))
    );
    assert_eq!(
        data[4].pointer("/delta/stop_reason"),
        Some(&json!("end_turn"))
    );
    let reqs = server.requests_to("/v1/messages");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].query, "beta=true");
    assert_eq!(reqs[0].header("authorization"), Some("Bearer test"));
    assert!(reqs[0].body_text().contains("hello there"));
}

#[test]
fn anthropic_echofirst_skips_injected_blocks_and_system_turns() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(json!([
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                                      {"type": "text", "text": "remember PELICAN"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "ECHOFIRST what was it"}]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment"}]}]));
    let resp = post(&server.base_url(), "/v1/messages", &body);
    assert_eq!(
        anthropic_text(&resp.sse_data()),
        "First message was: remember PELICAN"
    );
}

#[test]
fn anthropic_writefile_is_a_write_tool_use_in_the_cwd() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(
        json!([{"role": "user", "content": "WRITEFILE notes/a.txt hello mock world"}]),
    );
    let data = post(&server.base_url(), "/v1/messages", &body).sse_data();
    let block = data
        .iter()
        .find_map(|e| e.get("content_block"))
        .expect("content_block_start");
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "Write");
    let partial = data
        .iter()
        .find_map(|e| e.pointer("/delta/partial_json"))
        .and_then(Value::as_str)
        .expect("input_json_delta");
    let input: Value = serde_json::from_str(partial).expect("json input");
    assert_eq!(
        input,
        json!({"file_path": "/home/dev/ws/notes/a.txt", "content": "hello mock world"})
    );
    assert!(
        data.iter()
            .any(|e| e.pointer("/delta/stop_reason") == Some(&json!("tool_use")))
    );
}

#[test]
fn anthropic_tool_result_gets_wrote_it_and_runcmd_is_bash() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(json!([
        {"role": "user", "content": "WRITEFILE a.txt x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]));
    assert_eq!(
        anthropic_text(&post(&server.base_url(), "/v1/messages", &body).sse_data()),
        "Wrote it."
    );
    let body = anthropic_body(json!([{"role": "user", "content": "RUNCMD ls -la /tmp"}]));
    let data = post(&server.base_url(), "/v1/messages", &body).sse_data();
    assert_eq!(
        data.iter().find_map(|e| e.pointer("/content_block/name")),
        Some(&json!("Bash"))
    );
    let partial = data
        .iter()
        .find_map(|e| e.pointer("/delta/partial_json"))
        .and_then(Value::as_str)
        .expect("input");
    assert_eq!(
        serde_json::from_str::<Value>(partial).expect("json")["command"],
        "ls -la /tmp"
    );
}

#[test]
fn anthropic_non_streaming_and_side_endpoints() {
    let server = ModelServer::start().expect("start");
    let mut body = anthropic_body(json!([{"role": "user", "content": "hi"}]));
    body["stream"] = json!(false);
    let resp = post(&server.base_url(), "/v1/messages", &body);
    let v: Value = serde_json::from_str(&resp.body).expect("json");
    assert_eq!(v.pointer("/content/0/text"), Some(&json!("Mock reply: hi")));
    let resp = request(
        &server.base_url(),
        "POST",
        "/v1/messages/count_tokens",
        &[("x-api-key", "k")],
        Some(&body),
    );
    assert_eq!(resp.status, 200);
    let v: Value = serde_json::from_str(&resp.body).expect("json");
    assert!(v["input_tokens"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(
        request(&server.base_url(), "HEAD", "/", &[], None).status,
        200
    );
    let models = request(
        &server.base_url(),
        "GET",
        "/v1/models",
        &[("authorization", "Bearer k")],
        None,
    );
    assert!(models.body.contains("gpt-5.5"));
    assert_eq!(server.requests().len(), 4);
    assert_eq!(server.requests()[2].method, "HEAD");
}

#[test]
fn requests_without_a_key_get_401_in_the_provider_style() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(json!([{"role": "user", "content": "hi"}]));
    let resp = request(&server.base_url(), "POST", "/v1/messages", &[], Some(&body));
    assert_eq!(resp.status, 401);
    assert!(resp.body.contains("authentication_error"));
    let resp = request(
        &server.base_url(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer ")],
        Some(&json!({})),
    );
    assert_eq!(resp.status, 401);
    assert!(resp.body.contains("invalid_api_key"));
    let resp = request(
        &server.base_url(),
        "POST",
        "/v1/messages",
        &[("x-api-key", "k")],
        Some(&body),
    );
    assert_eq!(resp.status, 200);
}

#[test]
fn sleep_delays_the_reply() {
    let server = ModelServer::start().expect("start");
    let body = anthropic_body(json!([{"role": "user", "content": "SLEEP 400 then answer"}]));
    let t = Instant::now();
    let data = post(&server.base_url(), "/v1/messages", &body).sse_data();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(anthropic_text(&data), "Mock reply: SLEEP 400 then answer");
}

fn codex_body(tools: Value, input: Value) -> Value {
    json!({"model": "gpt-5.5", "stream": true, "instructions": "You are Codex.", "tools": tools, "input": input})
}

fn codex_input(last: &str) -> Value {
    json!([
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions instructions>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "# AGENTS.md instructions for /w"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>\n  <cwd>/home/dev/ws</cwd>\n</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first words"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": last}]}])
}

fn codex_tools() -> Value {
    json!([{"type": "function", "name": "exec_command", "parameters": {}},
           {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}])
}

#[test]
fn responses_text_stream_and_echofirst() {
    let server = ModelServer::start().expect("start");
    let resp = post(
        &server.base_url(),
        "/v1/responses",
        &codex_body(codex_tools(), codex_input("ECHOFIRST now")),
    );
    assert_eq!(
        resp.sse_events(),
        [
            "response.created",
            "response.output_item.added",
            "response.output_text.delta",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let data = resp.sse_data();
    assert_eq!(data[2]["delta"], "First message was: first words");
    assert_eq!(
        data[3].pointer("/item/content/0/text"),
        Some(&json!("First message was: first words"))
    );
    let usage = data[4].pointer("/response/usage").expect("usage");
    assert!(usage["input_tokens"].as_u64().is_some_and(|n| n > 0));
    assert!(usage["total_tokens"].as_u64().is_some());
}

#[test]
fn responses_writefile_prefers_apply_patch_then_exec_command() {
    let server = ModelServer::start().expect("start");
    let data = post(
        &server.base_url(),
        "/v1/responses",
        &codex_body(codex_tools(), codex_input("WRITEFILE c.txt hi codex")),
    )
    .sse_data();
    let item = data
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"])
        .expect("item");
    assert_eq!(item["type"], "custom_tool_call");
    assert_eq!(item["name"], "apply_patch");
    assert_eq!(
        item["input"],
        "*** Begin Patch\n*** Add File: /home/dev/ws/c.txt\n+hi codex\n*** End Patch"
    );
    assert!(item["call_id"].as_str().is_some());

    let only_exec = json!([{"type": "function", "name": "exec_command", "parameters": {}}]);
    let data = post(
        &server.base_url(),
        "/v1/responses",
        &codex_body(only_exec, codex_input("WRITEFILE c.txt it's")),
    )
    .sse_data();
    let item = data
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"])
        .expect("item");
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "exec_command");
    let args: Value =
        serde_json::from_str(item["arguments"].as_str().expect("arguments")).expect("json");
    assert_eq!(
        args["cmd"],
        r"printf '%s\n' 'it'\''s' > '/home/dev/ws/c.txt'"
    );
    assert_eq!(args["workdir"], "/home/dev/ws");
}

#[test]
fn responses_tool_output_gets_wrote_it() {
    let server = ModelServer::start().expect("start");
    let mut input = codex_input("RUNCMD ls");
    input.as_array_mut().expect("array").push(json!({"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"}));
    input
        .as_array_mut()
        .expect("array")
        .push(json!({"type": "function_call_output", "call_id": "c1", "output": "ok"}));
    let data = post(
        &server.base_url(),
        "/v1/responses",
        &codex_body(codex_tools(), input),
    )
    .sse_data();
    assert!(data.iter().any(|e| e["delta"] == "Wrote it."));
}

fn chat_body(messages: Value) -> Value {
    json!({"model": "mock-model", "stream": true, "stream_options": {"include_usage": true},
           "tools": [{"type": "function", "function": {"name": "write"}}, {"type": "function", "function": {"name": "bash"}}],
           "messages": messages})
}

#[test]
fn chat_writefile_streams_tool_call_deltas_then_done() {
    let server = ModelServer::start().expect("start");
    let body = chat_body(json!([
        {"role": "system", "content": "You are opencode.\n  Working directory: /home/dev/ws\n"},
        {"role": "user", "content": "WRITEFILE b.txt hello oc"}]));
    let data = post(&server.base_url(), "/v1/chat/completions", &body).sse_data();
    assert_eq!(data.last(), Some(&Value::Null), "ends with [DONE]");
    let call = data
        .iter()
        .find_map(|e| e.pointer("/choices/0/delta/tool_calls/0"))
        .expect("tool call delta");
    assert_eq!(call.pointer("/function/name"), Some(&json!("write")));
    let args: Value = serde_json::from_str(
        call.pointer("/function/arguments")
            .and_then(Value::as_str)
            .expect("args"),
    )
    .expect("json");
    assert_eq!(
        args,
        json!({"filePath": "/home/dev/ws/b.txt", "content": "hello oc"})
    );
    assert!(
        data.iter()
            .any(|e| e.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls")))
    );
    assert!(
        data.iter()
            .any(|e| e.pointer("/usage/total_tokens").is_some())
    );
}

#[test]
fn chat_title_request_and_tool_result() {
    let server = ModelServer::start().expect("start");
    let title = chat_body(json!([
        {"role": "system", "content": "You are a title generator. You output ONLY a thread title."},
        {"role": "user", "content": "ECHOFIRST hi"}]));
    let text: String = post(&server.base_url(), "/v1/chat/completions", &title)
        .sse_data()
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Test title");
    let done = chat_body(json!([
        {"role": "user", "content": "WRITEFILE b.txt x"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "write", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Wrote file successfully."}]));
    let text: String = post(&server.base_url(), "/v1/chat/completions", &done)
        .sse_data()
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Wrote it.");
}
