//! The three wire formats: a scripted reply as server-sent events (or one JSON body when the request did not ask
//! for a stream), shaped the way the pinned CLIs parse them.

use super::script::{Reply, ToolCall};
use serde_json::{Value, json};

/// One SSE frame. `event:` lines are what Anthropic and the Responses API send; Chat Completions sends data only.
fn frame(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// A rough token count so usage numbers are non-zero and grow with the text.
pub(crate) fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn tool_args_text(call: &ToolCall) -> String {
    match &call.input {
        Value::String(s) if call.custom => s.clone(),
        other => other.to_string(),
    }
}

/// Anthropic Messages stream. Returns (head, rest): the head goes out at once, the rest after any delay.
pub(crate) fn anthropic_stream(
    reply: &Reply,
    id: u64,
    model: &str,
    input_tokens: u64,
) -> (Vec<String>, Vec<String>) {
    let msg_id = format!("msg_mock{id:020}");
    let head = vec![frame(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    )];
    let mut rest = Vec::new();
    let (stop_reason, out_tokens) = match reply {
        Reply::Text(text) => {
            rest.push(frame(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            rest.push(frame(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            ));
            ("end_turn", tokens(text))
        }
        Reply::Tool(call) => {
            let args = tool_args_text(call);
            rest.push(frame(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": format!("toolu_mock{id:014}"), "name": call.name, "input": {}}}),
            ));
            rest.push(frame(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
            ));
            ("tool_use", tokens(&args))
        }
    };
    rest.push(frame(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    rest.push(frame(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": out_tokens}}),
    ));
    rest.push(frame(
        Some("message_stop"),
        &json!({"type": "message_stop"}),
    ));
    (head, rest)
}

/// Anthropic Messages non-streaming body.
pub(crate) fn anthropic_json(reply: &Reply, id: u64, model: &str, input_tokens: u64) -> Value {
    let (content, stop, out) = match reply {
        Reply::Text(t) => (json!([{"type": "text", "text": t}]), "end_turn", tokens(t)),
        Reply::Tool(c) => (
            json!([{"type": "tool_use", "id": format!("toolu_mock{id:014}"), "name": c.name, "input": c.input}]),
            "tool_use",
            tokens(&tool_args_text(c)),
        ),
    };
    json!({"id": format!("msg_mock{id:020}"), "type": "message", "role": "assistant", "model": model,
           "content": content, "stop_reason": stop, "stop_sequence": null,
           "usage": {"input_tokens": input_tokens, "output_tokens": out}})
}

fn responses_usage(input_tokens: u64, out: u64) -> Value {
    json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": input_tokens + out})
}

fn responses_item(reply: &Reply, id: u64) -> (Value, Value, u64) {
    match reply {
        Reply::Text(text) => {
            let item_id = format!("msg_mock{id}");
            let added = json!({"type": "message", "id": item_id, "role": "assistant", "status": "in_progress",
                               "content": []});
            let done = json!({"type": "message", "id": item_id, "role": "assistant", "status": "completed",
                              "content": [{"type": "output_text", "text": text, "annotations": []}]});
            (added, done, tokens(text))
        }
        Reply::Tool(call) if call.custom => {
            let input = tool_args_text(call);
            let item = json!({"type": "custom_tool_call", "id": format!("ctc_mock{id}"), "status": "completed",
                              "call_id": format!("call_mock{id}"), "name": call.name, "input": input});
            (item.clone(), item, tokens(&input))
        }
        Reply::Tool(call) => {
            let args = tool_args_text(call);
            let item = json!({"type": "function_call", "id": format!("fc_mock{id}"), "status": "completed",
                              "call_id": format!("call_mock{id}"), "name": call.name, "arguments": args});
            (item.clone(), item, tokens(&args))
        }
    }
}

/// OpenAI Responses stream, as Codex reads it.
pub(crate) fn responses_stream(
    reply: &Reply,
    id: u64,
    model: &str,
    input_tokens: u64,
) -> (Vec<String>, Vec<String>) {
    let resp_id = format!("resp_mock{id}");
    let head = vec![frame(
        Some("response.created"),
        &json!({"type": "response.created", "sequence_number": 0,
                "response": {"id": resp_id, "object": "response", "status": "in_progress", "model": model, "output": []}}),
    )];
    let (added, done, out) = responses_item(reply, id);
    let mut rest = vec![frame(
        Some("response.output_item.added"),
        &json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": added}),
    )];
    if let Reply::Text(text) = reply {
        rest.push(frame(
            Some("response.output_text.delta"),
            &json!({"type": "response.output_text.delta", "sequence_number": 2, "item_id": done["id"],
                    "output_index": 0, "content_index": 0, "delta": text}),
        ));
    }
    rest.push(frame(
        Some("response.output_item.done"),
        &json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": done}),
    ));
    rest.push(frame(
        Some("response.completed"),
        &json!({"type": "response.completed", "sequence_number": 4,
                "response": {"id": resp_id, "object": "response", "status": "completed", "model": model,
                             "output": [done], "usage": responses_usage(input_tokens, out)}}),
    ));
    (head, rest)
}

/// OpenAI Responses non-streaming body.
pub(crate) fn responses_json(reply: &Reply, id: u64, model: &str, input_tokens: u64) -> Value {
    let (_, done, out) = responses_item(reply, id);
    json!({"id": format!("resp_mock{id}"), "object": "response", "status": "completed", "model": model,
           "output": [done], "usage": responses_usage(input_tokens, out)})
}

fn chat_chunk(id: u64, model: &str, choices: Value) -> Value {
    json!({"id": format!("chatcmpl-mock{id}"), "object": "chat.completion.chunk", "created": 1_700_000_000u64,
           "model": model, "choices": choices})
}

/// OpenAI Chat Completions stream, as OpenCode's `@ai-sdk/openai-compatible` reads it.
pub(crate) fn chat_stream(
    reply: &Reply,
    id: u64,
    model: &str,
    input_tokens: u64,
) -> (Vec<String>, Vec<String>) {
    let head = vec![frame(
        None,
        &chat_chunk(
            id,
            model,
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        ),
    )];
    let mut rest = Vec::new();
    let (finish, out) = match reply {
        Reply::Text(text) => {
            rest.push(frame(
                None,
                &chat_chunk(
                    id,
                    model,
                    json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]),
                ),
            ));
            ("stop", tokens(text))
        }
        Reply::Tool(call) => {
            let args = tool_args_text(call);
            rest.push(frame(
                None,
                &chat_chunk(
                    id,
                    model,
                    json!([{"index": 0, "finish_reason": null, "delta": {"tool_calls": [{
                        "index": 0, "id": format!("call_mock{id}"), "type": "function",
                        "function": {"name": call.name, "arguments": args}}]}}]),
                ),
            ));
            ("tool_calls", tokens(&args))
        }
    };
    rest.push(frame(
        None,
        &chat_chunk(
            id,
            model,
            json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
        ),
    ));
    let mut usage = chat_chunk(id, model, json!([]));
    usage["usage"] = json!({"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out});
    rest.push(frame(None, &usage));
    rest.push("data: [DONE]\n\n".to_owned());
    (head, rest)
}

/// OpenAI Chat Completions non-streaming body.
pub(crate) fn chat_json(reply: &Reply, id: u64, model: &str, input_tokens: u64) -> Value {
    let (message, finish, out) = match reply {
        Reply::Text(t) => (
            json!({"role": "assistant", "content": t}),
            "stop",
            tokens(t),
        ),
        Reply::Tool(c) => {
            let args = tool_args_text(c);
            let out = tokens(&args);
            let msg = json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_mock{id}"), "type": "function", "function": {"name": c.name, "arguments": args}}]});
            (msg, "tool_calls", out)
        }
    };
    json!({"id": format!("chatcmpl-mock{id}"), "object": "chat.completion", "created": 1_700_000_000u64,
           "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}})
}
