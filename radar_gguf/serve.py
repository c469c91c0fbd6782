"""An OpenAI-compatible HTTP server over a Radar model: ``python -m radar_gguf.serve [MODEL] --ctx 64k``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``"stream": true`` for
server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health``. Standard library
only (``http.server``): one model, requests handled on threads, generation serialized by a lock;
each request reuses the longest prefix of the previous one already in the context, so a chat
client that resends its history does not re-prefill it. Errors are OpenAI-style JSON
(``{"error": {"message", "type", "param", "code"}}``) with status 400 for bad requests.

Why over 600 lines: request validation (every field checked, with its own error) and streaming with stop
strings that never leak take most of it; both are the server's job and nobody else's.

Supported request fields: ``messages`` / ``prompt``, ``max_tokens`` (``max_completion_tokens``),
``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repeat_penalty``, ``seed``, ``stop``, ``stream``,
``stream_options.include_usage``, ``n`` (1 only), ``echo`` (completions). ``model`` is accepted and
ignored (there is one model).
"""

from __future__ import annotations

import argparse
import hmac
import json
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .args import add_model_args, add_radar_args, load_from_args, parse_args_and_radar
from .sizes import format_size

DEFAULT_CTX = "8k"
MAX_BODY = 64 << 20
DEFAULT_TEMPERATURE = 0.8  # llama-cpp-python's server default; OpenAI's is 1.0
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A validated generation request."""

    kind: str  # "chat" | "completion"
    tokens: list
    stops: list
    max_tokens: Optional[int]
    sampling: dict
    stream: bool = False
    include_usage: bool = False
    echo: str = ""
    model: str = ""


# -- validation ----------------------------------------------------------------------------------------


def _number(body: dict, name: str, default: Any, lo: float, hi: float, integer: bool = False) -> Any:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise APIError(
            f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(v)}",
            param=name,
            code="invalid_type",
        )
    if not lo <= v <= hi:
        raise APIError(f"'{name}' must be between {lo} and {hi}, got {v}", param=name, code="invalid_value")
    return v


def _common(body: dict, kind: str) -> dict:
    n = _number(body, "n", 1, 1, 1 << 30, integer=True)
    if n != 1:
        raise APIError("only n=1 is supported", param="n", code="unsupported_value")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs"):
        raise APIError("logprobs are not supported", param="logprobs", code="unsupported_parameter")
    stop = body.get("stop")
    if stop is None:
        stops: list = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise APIError("'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    stops = [s for s in stops if s]
    mt_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, mt_name, None, 1, 1 << 30, integer=True)
    if max_tokens is None and kind == "completion":
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError("'stream' must be a boolean", param="stream", code="invalid_type")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError("'stream_options' must be an object", param="stream_options", code="invalid_type")
    sampling = {
        "temperature": _number(body, "temperature", DEFAULT_TEMPERATURE, 0, 2),
        "top_p": _number(body, "top_p", 0.95, 0, 1),
        "top_k": _number(body, "top_k", 40, 0, 1 << 30, integer=True),
        "min_p": _number(body, "min_p", 0.05, 0, 1),
        "repeat_penalty": _number(body, "repeat_penalty", 1.0, 0, 10),
        "seed": _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
    }
    if sampling["seed"] is not None:
        sampling["seed"] %= 1 << 32
    model = body.get("model") or ""
    if not isinstance(model, str):
        raise APIError("'model' must be a string", param="model", code="invalid_type")
    return {
        "stops": stops,
        "max_tokens": max_tokens,
        "sampling": sampling,
        "stream": stream,
        "include_usage": bool(opts.get("include_usage")),
        "model": model,
    }


def _content_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(
                    f"messages[{i}].content: only text parts are supported, got {kind!r}",
                    param=f"messages[{i}].content",
                    code="unsupported_content",
                )
        return "".join(parts)
    raise APIError(
        f"messages[{i}].content must be a string or a list of text parts",
        param=f"messages[{i}].content",
        code="invalid_type",
    )


def parse_messages(body: dict) -> list:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError("'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError("'messages' must be a non-empty list", param="messages", code="invalid_type")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise APIError(
                f"messages[{i}].role must be system, developer, user, assistant or tool, got "
                f"{json.dumps(role)}",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        if "content" not in m and role != "assistant":
            raise APIError(
                f"messages[{i}].content is required",
                param=f"messages[{i}].content",
                code="missing_required_parameter",
            )
        out.append({"role": role, "content": _content_text(m.get("content"), i)})
    return out


def _reject_unsupported(body: dict) -> None:
    if body.get("tools") or body.get("functions") or body.get("tool_choice") not in (None, "none", "auto"):
        raise APIError(
            "tools and function calling are not supported", param="tools", code="unsupported_parameter"
        )
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise APIError(
            'only response_format {"type": "text"} is supported',
            param="response_format",
            code="unsupported_parameter",
        )
    if body.get("suffix"):
        raise APIError("'suffix' is not supported", param="suffix", code="unsupported_parameter")


# -- the service ----------------------------------------------------------------------------------------


class Service:
    """The model behind the HTTP server: validates requests and generates, one request at a time."""

    def __init__(self, model, *, model_id: Optional[str] = None, api_key: Optional[str] = None) -> None:
        self.model = model
        self.model_id = model_id or model.path.stem
        self.api_key = api_key
        self.created = int(time.time())
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # requests -> token ids
    def chat_request(self, body: dict) -> Request:
        _reject_unsupported(body)
        common = _common(body, "chat")
        messages = parse_messages(body)
        tokens, template_stops = self.model.chat_tokens(messages)  # the tokenizer is safe to share
        return self._request("chat", tokens, template_stops, common)

    def completion_request(self, body: dict) -> Request:
        _reject_unsupported(body)
        common = _common(body, "completion")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if prompt is None:
            raise APIError("'prompt' is required", param="prompt", code="missing_required_parameter")
        if isinstance(prompt, str):
            if not prompt:
                raise APIError("'prompt' is empty", param="prompt", code="invalid_value")
            tokens = self.model.tokenize(prompt)
            echo_text = prompt
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            n_vocab = self.model.llama.n_vocab()
            if not all(0 <= t < n_vocab for t in prompt):
                raise APIError(
                    f"token ids in 'prompt' must be in [0, {n_vocab})", param="prompt", code="invalid_value"
                )
            tokens = list(prompt)
            echo_text = self.model.detokenize(tokens)
        else:
            raise APIError(
                "'prompt' must be a string, a list of token ids, or a list holding one of those "
                "(batches are not supported)",
                param="prompt",
                code="invalid_type",
            )
        echo = body.get("echo", False)
        if not isinstance(echo, bool):
            raise APIError("'echo' must be a boolean", param="echo", code="invalid_type")
        req = self._request("completion", tokens, [], common)
        req.echo = echo_text if echo else ""
        return req

    def _request(self, kind: str, tokens: list, template_stops: list, common: dict) -> Request:
        ctx = self.model.ctx
        if len(tokens) >= ctx:
            raise APIError(
                f"This model's maximum context length is {ctx} tokens. However, your "
                f"{'messages' if kind == 'chat' else 'prompt'} resulted in {len(tokens)} tokens; "
                "no room is left for the reply.",
                param="messages" if kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        return Request(
            kind=kind,
            tokens=tokens,
            stops=list(dict.fromkeys(common["stops"] + template_stops)),
            max_tokens=common["max_tokens"],
            sampling=common["sampling"],
            stream=common["stream"],
            include_usage=common["include_usage"],
            model=common["model"],
        )

    # generation
    def generate(self, req: Request) -> Iterator[tuple[str, Optional[str], dict]]:
        """Yield (text, finish_reason, usage) pieces; finish_reason and usage are set on the last one.

        Stop strings are handled here so that no part of one is ever sent: text that could be the
        start of a stop string is held back until it is known not to be.
        """
        import radar_gguf._lib as _lib

        with self.lock:
            if self.stopping.is_set():
                raise APIError("the server is shutting down", status=503, type="server_error")
            model = self.model
            room = model.ctx - len(req.tokens)
            max_tokens = min(req.max_tokens or room, room)
            gen = model.stream_generate(req.tokens, max_tokens=max_tokens, stop=(), **req.sampling)
            vocab = model.llama._model.vocab
            is_eog = _lib.bindings().llama_vocab_is_eog
            full = ""
            sent = 0
            finish: Optional[str] = None
            n_out = 0
            n_prefilled = len(req.tokens)
            max_stop = max((len(s) for s in req.stops), default=0)
            try:
                for r in gen:
                    n_prefilled = r.prompt_tokens
                    if not (r.finish_reason == "stop" and is_eog(vocab, r.token)):
                        n_out += 1
                    full += r.text
                    finish = r.finish_reason
                    if req.stops:
                        start = max(0, sent - max_stop)
                        hits = [i for i in (full.find(s, start) for s in req.stops) if i >= 0]
                        if hits:
                            full = full[: min(hits)]
                            finish = "stop"
                    if finish is not None:
                        break
                    if self.stopping.is_set():
                        finish = "length"
                        break
                    safe = len(full) - _held_back(full, req.stops)
                    if safe > sent:
                        yield full[sent:safe], None, {}
                        sent = safe
            finally:
                gen.close()
            usage = {
                "prompt_tokens": len(req.tokens),
                "completion_tokens": n_out,
                "total_tokens": len(req.tokens) + n_out,
                "prompt_tokens_details": {"cached_tokens": len(req.tokens) - n_prefilled},
            }
            yield full[sent:], finish or "length", usage

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "radar_gguf",
            "context_length": self.model.ctx,
            "radar": self.model.radar.describe(),
        }


def _held_back(text: str, stops: list) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


# -- HTTP ------------------------------------------------------------------------------------------------


def _chunk_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


class Handler(BaseHTTPRequestHandler):
    server_version = "radar_gguf"
    protocol_version = "HTTP/1.1"
    service: Service  # set on the subclass made by make_server
    quiet = False

    # plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.quiet:
            sys.stderr.write(f"serve: {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, e: APIError) -> None:
        self.close_connection = True  # the request body may be unread: start afresh
        self._send_json(e.status, e.body())

    def _read_body(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise APIError("chunked request bodies are not supported; send Content-Length", status=411)
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise APIError("bad Content-Length header") from None
        if n > MAX_BODY:
            raise APIError(f"request body over {MAX_BODY} bytes", status=413)
        raw = self.rfile.read(n) if n > 0 else b""
        if not raw.strip():
            raise APIError("the request body is empty; send a JSON object", code="invalid_json")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise APIError(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object", code="invalid_json")
        return body

    def _authorized(self) -> bool:
        key = self.service.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        if got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), key.encode()):
            return True
        self._send_error(
            APIError(
                "invalid or missing API key (Authorization: Bearer ...)",
                status=401,
                type="authentication_error",
                code="invalid_api_key",
            )
        )
        return False

    @staticmethod
    def _route(path: str) -> str:
        path = path.split("?", 1)[0].rstrip("/")
        return path[3:] if path.startswith("/v1/") or path == "/v1" else path

    # methods
    def do_GET(self) -> None:  # noqa: N802
        route = self._route(self.path)
        if route in ("/health", ""):
            return self._send_json(200, {"status": "ok", "model": self.service.model_id})
        if not self._authorized():
            return
        if route == "/models":
            return self._send_json(200, self.service.models())
        if route == f"/models/{self.service.model_id}":
            return self._send_json(200, self.service.model_card())
        if route.startswith("/models/"):
            return self._send_error(
                APIError(f"the model {route[8:]!r} does not exist", status=404, code="model_not_found")
            )
        self._send_error(APIError(f"no such endpoint: GET {self.path}", status=404, code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        route = self._route(self.path)
        try:
            if route not in ("/chat/completions", "/completions"):
                raise APIError(f"no such endpoint: POST {self.path}", status=404, code="not_found")
            if not self._authorized():
                return
            body = self._read_body()
            svc = self.service
            req = svc.chat_request(body) if route == "/chat/completions" else svc.completion_request(body)
        except APIError as e:
            return self._send_error(e)
        try:
            if req.stream:
                self._stream(req)
            else:
                self._complete(req)
        except APIError as e:  # raised before anything was sent (e.g. shutting down)
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; generation stopped with it
        except Exception as e:  # a bug or a library failure: say so, keep serving
            traceback.print_exc()
            self.close_connection = True
            try:
                self._send_error(APIError(f"internal error: {e}", status=500, type="server_error"))
            except OSError:
                pass

    def do_OPTIONS(self) -> None:  # noqa: N802  (CORS preflight for browser clients)
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    # responses
    def _complete(self, req: Request) -> None:
        text, finish, usage = [], "length", {}
        for piece, f, u in self.service.generate(req):
            text.append(piece)
            if f is not None:
                finish, usage = f, u
        out = "".join(text)
        cid, created = _chunk_id(req.kind), int(time.time())
        model = self.service.model_id
        if req.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": out},
                "logprobs": None,
                "finish_reason": finish,
            }
            obj = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        else:
            choice = {"index": 0, "text": req.echo + out, "logprobs": None, "finish_reason": finish}
            obj = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        self._send_json(200, obj)

    def _stream(self, req: Request) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True  # the body ends when the connection closes
        cid, created = _chunk_id(req.kind), int(time.time())
        model = self.service.model_id
        chat = req.kind == "chat"
        obj_name = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list, usage: Optional[dict] = None) -> None:
            obj = {"id": cid, "object": obj_name, "created": created, "model": model, "choices": choices}
            if usage is not None:
                obj["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        def choice(text: Optional[str], finish: Optional[str], first: bool = False) -> dict:
            if chat:
                delta: dict = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if chat:
            event([choice(None, None, first=True)])
        elif req.echo:
            event([choice(req.echo, None)])
        gen = self.service.generate(req)
        try:
            for piece, finish, usage in gen:
                if finish is None:
                    event([choice(piece, None)])
                else:
                    if piece:
                        event([choice(piece, None)])
                    event([choice(None, finish)])
                    if req.include_usage:
                        event([], usage)
        finally:
            gen.close()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(
    service: Service, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False
) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"service": service, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# -- command line ----------------------------------------------------------------------------------------


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radar-gguf serve", description=__doc__.splitlines()[0])
    add_model_args(p, ctx_default=DEFAULT_CTX)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--alias", default=None, help="model id in the API (default: the GGUF file name)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--seed", type=int, default=0, help="sampling seed when a request has none")
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    add_radar_args(p)
    return p


def main(argv: Optional[list] = None) -> int:
    parser = setup_arg_parser()
    args, radar = parse_args_and_radar(parser, argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in [0, 65535]")
    model = load_from_args(args, radar)
    if model is None:
        return 1
    service = Service(model, model_id=args.alias, api_key=args.api_key)
    try:
        server = make_server(service, args.host, args.port, quiet=args.quiet)
    except OSError as e:
        model.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(
        f"radar_gguf.serve: {service.model_id}, context {format_size(model.ctx)}, {model.radar.describe()}",
        file=sys.stderr,
    )
    print(f"listening on http://{shown}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.stopping.set()
        server.server_close()
        # a generation in flight stops at its next token; free the model only once it has
        if service.lock.acquire(timeout=30):
            model.close()
        print("radar_gguf.serve: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
