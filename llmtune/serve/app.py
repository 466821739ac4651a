"""The HTTP application of `llmtune serve` (FastAPI): OpenAI-style routes over the engine,
one-line 4xx errors for bad requests, and a cap on request bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmtune.config.schema import EvaluateConfig, ServeConfig
from llmtune.serve import protocol as p
from llmtune.serve.engine import Engine, GenerationJob, Task
from llmtune.serve.model import RequestError, Served
from llmtune.serve.stream import TextStream, sse


class BodyLimit:
    """Refuse (413) a request body over `limit` bytes before the app reads it: by its
    Content-Length, or while reading a body sent without one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # later reads wait for a disconnect (streaming responses watch it)
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over serve.max_body_bytes={self.limit} bytes"
        await JSONResponse(p.error_body(message), status_code=413)(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    """The first problem of a request body as one line: `max_tokens: Input should be ...`."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return f"malformed JSON body ({first.get('ctx', {}).get('error', 'cannot parse')})"
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    if first.get("type") == "extra_forbidden":
        return f"{where}: not a field llmtune serve takes (unknown, or not implemented)"
    return f"{where}: {first.get('msg', 'invalid')}"


def build_app(served: Served, engine: Engine, cfg: ServeConfig) -> FastAPI:
    """The application; the engine must be started (and later stopped) by the caller."""
    app = FastAPI(title="llmtune serve", docs_url=None, redoc_url=None, openapi_url=None)
    routes = Routes(served, engine, cfg)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(p.error_body(_validation_message(exc)), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(p.error_body(message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        # a bug or a failing model call: the request fails in one line, the server goes on
        message = f"{request.url.path} failed: {type(exc).__name__}: {exc}"
        return JSONResponse(p.error_body(message, "server_error"), status_code=500)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(p.error_body(str(exc)), status_code=400)

    app.get("/health")(routes.health)
    app.get("/v1/models")(routes.models)
    app.post("/v1/completions")(routes.completions)
    app.post("/v1/chat/completions")(routes.chat)
    app.post("/v1/embeddings")(routes.embeddings)
    app.post("/v1/classify")(routes.classify)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app


class Routes:
    def __init__(self, served: Served, engine: Engine, cfg: ServeConfig) -> None:
        self.served, self.engine, self.cfg = served, engine, cfg

    async def health(self) -> dict[str, Any]:
        loaded = self.served.loaded
        return {
            "status": "ok",
            "model": self.served.name,
            "family": loaded.family,
            "heads": list(loaded.model.heads),
            "endpoints": self.served.endpoints(),
            # what batching achieved so far: generate calls, and the prompts they completed
            "generation_batches": len(self.engine.batches),
            "prompts_generated": sum(self.engine.batches),
        }

    async def models(self) -> dict[str, Any]:
        card = {"id": self.served.name, "object": "model", "created": 0, "owned_by": "llmtune"}
        return {"object": "list", "data": [card]}

    async def completions(self, body: p.CompletionRequest) -> Any:
        prompts = self._inputs(p.as_list(body.prompt), "prompt")
        return await self._generate(body, prompts, chat=False)

    async def chat(self, body: p.ChatRequest) -> Any:
        text = self.served.chat_prompt([(m.role, m.content) for m in body.messages])
        return await self._generate(body, [text], chat=True)

    async def embeddings(self, body: p.EmbeddingRequest) -> dict[str, Any]:
        self._need(self.served.can_embed, "embeddings", "an encoder or a contrastive checkpoint")
        texts = self._inputs(p.as_list(body.input), "input")
        vectors, tokens = await self._run(lambda: self.served.embed(texts))
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.served.name, "usage": usage}

    async def classify(self, body: p.ClassifyRequest) -> dict[str, Any]:
        self._need(self.served.can_classify, "classification", "a seq_cls checkpoint")
        texts = self._inputs(p.as_list(body.input), "input")
        pairs = None if body.text_pair is None else p.as_list(body.text_pair)
        if pairs is not None and len(pairs) != len(texts):
            raise RequestError(f"text_pair: {len(pairs)} texts for {len(texts)} inputs")
        rows = await self._run(lambda: self.served.classify(texts, pairs))
        data = [{"index": i, **row} for i, row in enumerate(rows)]
        return {"object": "list", "data": data, "model": self.served.name}

    def _need(self, ok: bool, what: str, needs: str) -> None:
        if not ok:
            raise RequestError(
                f"this server's model ({self.served.loaded.family}, heads "
                f"{list(self.served.loaded.model.heads) or 'none'}) serves no {what}; it needs "
                f"{needs} (this one serves {', '.join(self.served.endpoints())})"
            )

    def _inputs(self, items: list[str], key: str) -> list[str]:
        if not items:
            raise RequestError(f"{key}: an empty list; give at least one text")
        if len(items) > self.cfg.max_inputs:
            raise RequestError(
                f"{key}: {len(items)} texts; a request takes at most serve.max_inputs="
                f"{self.cfg.max_inputs}"
            )
        return items

    async def _run(self, work: Any) -> Any:
        return await asyncio.wrap_future(self.engine.submit(Task(work)))

    async def _generate(self, body: p.Sampling, texts: list[str], chat: bool) -> Any:
        self._need(self.served.can_generate, "completions", "a decoder with an lm head")
        if body.max_tokens > self.cfg.max_tokens:
            raise RequestError(
                f"max_tokens={body.max_tokens}: this server allows at most serve.max_tokens="
                f"{self.cfg.max_tokens}"
            )
        ids = [self.served.prompt_ids(t) for t in texts]
        sampling = EvaluateConfig(
            batch_size=self.cfg.batch_size,
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
        )
        streams = [TextStream(self.served.decode, body.stops()) for _ in ids]
        if body.stream:
            return StreamingResponse(
                self._events(ids, sampling, streams, chat), media_type="text/event-stream"
            )
        outs = await asyncio.wrap_future(self.engine.submit(GenerationJob(ids, sampling)))
        choices, produced = [], 0
        for i, (out, stream) in enumerate(zip(outs, streams)):
            stream.extend(out.token_ids)
            text, finish = stream.final(p.FINISH[out.stop_reason])
            produced += len(out.token_ids)
            choose = p.chat_choice if chat else p.text_choice
            choices.append(choose(i, text, finish))
        kind = "chat.completion" if chat else "text_completion"
        reply = p.envelope(
            kind, p.new_id("chatcmpl" if chat else "cmpl"), self.served.name, choices
        )
        reply["usage"] = p.usage(sum(len(x) for x in ids), produced)
        return reply

    async def _events(
        self, ids: list[list[int]], sampling: EvaluateConfig, streams: list[TextStream], chat: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: a chunk per new piece of text, a last chunk per choice with
        its finish_reason, then `[DONE]`."""
        loop = asyncio.get_running_loop()
        heard: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        def on_token(i: int, token: int) -> None:
            loop.call_soon_threadsafe(heard.put_nowait, (i, token))

        job = GenerationJob(ids, sampling, on_token)
        future = self.engine.submit(job)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(heard.put_nowait, None))
        kind = "chat.completion.chunk" if chat else "text_completion"
        rid = p.new_id("chatcmpl" if chat else "cmpl")

        def chunk(i: int, text: str, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                choice = p.chat_delta(i, delta if text or first else {}, finish)
            else:
                choice = p.text_choice(i, text, finish)
            return sse(p.envelope(kind, rid, self.served.name, [choice]))

        if chat:
            yield chunk(0, "", None, first=True)
        while (item := await heard.get()) is not None:
            i, token = item
            piece = streams[i].push(token)
            if piece:
                yield chunk(i, piece, None)
        try:
            outs = future.result()
        except Exception as exc:  # noqa: BLE001 - the status line is sent: say it in-band
            yield sse(p.error_body(f"generation failed: {exc}", "server_error"))
            return
        for i, out in enumerate(outs):
            text, finish = streams[i].final(p.FINISH[out.stop_reason])
            yield chunk(i, text, finish)
        yield "data: [DONE]\n\n"
