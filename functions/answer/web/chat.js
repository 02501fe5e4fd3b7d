// The ShardRAG chat page: one ES module, no build step. It talks to POST chat (server-sent events), GET
// chat/sessions, POST uploads (a presigned PUT) and GET uploads/status, all relative to the page's own URL so
// the same file works locally (served at /) and deployed (served under the API stage).

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).toString();

const state = { sessionId: null, controller: null, sessions: [] };

// Errors in words: what the status means for the person asking, then the server's own message.
const STATUS_WORDS = {
  400: "The question was not accepted",
  403: "You are not allowed to ask here (your sign-in carries no tenant)",
  404: "This conversation no longer exists (it expired or belongs to someone else)",
  429: "The service is busy right now; try again in a moment",
  500: "The server failed to answer",
  502: "The answer could not be generated",
  503: "No part of the index could answer right now",
  504: "The answer took too long",
};

function describe(status, message) {
  const words = STATUS_WORDS[status] || `The request failed (HTTP ${status})`;
  return message ? `${words}: ${message}` : `${words}.`;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function headers() {
  const h = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const token = localStorage.getItem("shardrag.token");
  if (token) h.Authorization = token;
  return h;
}

// -- rendering --------------------------------------------------------------------------------------------
function addUserTurn(text) {
  const li = document.createElement("li");
  li.className = "user";
  li.innerHTML = '<span class="visually-hidden">You asked: </span>';
  li.append(document.createTextNode(text));
  $("log").append(li);
  return li;
}

function addAssistantTurn() {
  const li = document.createElement("li");
  li.className = "assistant streaming";
  li.setAttribute("aria-busy", "true");
  const answer = document.createElement("div");
  answer.className = "answer";
  const meta = document.createElement("div");
  meta.className = "meta";
  li.append(answer, meta);
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return { li, answer, meta, text: "", citations: [] };
}

// Text with [n] markers becomes text nodes and buttons that open the cited chunk.
function renderAnswer(turn) {
  turn.answer.replaceChildren();
  const parts = turn.text.split(/(\[\d+\])/);
  for (const part of parts) {
    const m = part.match(/^\[(\d+)\]$/);
    const citation = m && turn.citations.find((c) => c.ref === Number(m[1]));
    if (citation) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "cite";
      button.textContent = part;
      button.setAttribute("aria-label", `Source ${m[1]}: ${citation.doc_id}`);
      button.addEventListener("click", () => openCitation(citation, turn));
      turn.answer.append(button);
    } else if (part) {
      turn.answer.append(document.createTextNode(part));
    }
  }
}

function openCitation(citation, turn) {
  const hit = (turn.hits || []).find((h) => h.chunk_id === citation.chunk_id) || {};
  const rows = [
    ["Document", citation.doc_id],
    ["Source", citation.source],
    ["Title", citation.title || "—"],
    ["Shard", hit.shard ?? "—"],
    ["Score", Number(citation.score).toFixed(3)],
    ["Chunk", citation.chunk_id],
  ];
  $("citation-title").textContent = `Source [${citation.ref}]`;
  $("citation-meta").replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      return [dt, dd];
    }),
  );
  $("citation-text").textContent = citation.text;
  $("citation").showModal();
}

function renderRetrieval(turn, data) {
  turn.citations = data.citations || [];
  turn.hits = data.hits || [];
  const t = data.timings_ms || {};
  const shards = t.shards || {};
  const rows = [
    ["condense", t.condense],
    ["embed", t.embed],
    ["route", t.route],
    ...Object.keys(shards).sort((a, b) => a - b).map((k) => [`shard ${k}`, shards[k]]),
    ["fuse", t.fuse],
    ["rerank", t.rerank],
    ["retrieval (total)", t.retrieval],
  ];
  const query = document.createElement("p");
  query.className = "retrieval-query";
  query.textContent = `Retrieval query: ${data.retrieval_query}`;
  const table = document.createElement("table");
  table.className = "timings";
  const caption = document.createElement("caption");
  caption.textContent = "Time per stage (ms)";
  table.append(caption);
  for (const [name, value] of rows) {
    if (value === undefined || value === null) continue;
    const tr = document.createElement("tr");
    tr.innerHTML = "<th scope='row'></th><td></td>";
    tr.firstChild.textContent = name;
    tr.lastChild.textContent = Number(value).toFixed(1);
    tr.dataset.stage = name;
    table.append(tr);
  }
  turn.meta.replaceChildren(query, table);
  turn.timings = table;
  const banner = $("banner");
  if (data.degraded) {
    const failed = (data.shards && data.shards.failed) || [];
    banner.textContent = `Degraded answer: shard${failed.length === 1 ? "" : "s"} ${failed.join(", ")} did not answer, so some documents may be missing.`;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

function renderDone(turn, data) {
  turn.text = data.answer ?? turn.text;
  turn.citations = data.citations && data.citations.length ? mergeCitations(turn.citations, data.citations) : turn.citations;
  renderAnswer(turn);
  for (const [name, value] of [["first token", data.ttft_ms], ["total", data.total_ms]]) {
    if (value === undefined || value === null || !turn.timings) continue;
    const tr = document.createElement("tr");
    tr.innerHTML = "<th scope='row'></th><td></td>";
    tr.firstChild.textContent = name;
    tr.lastChild.textContent = Number(value).toFixed(1);
    tr.dataset.stage = name;
    turn.timings.append(tr);
  }
}

function mergeCitations(known, cited) {
  const byRef = new Map(known.map((c) => [c.ref, c]));
  for (const c of cited) byRef.set(c.ref, c);
  return [...byRef.values()];
}

function finishTurn(turn, note) {
  turn.li.classList.remove("streaming");
  turn.li.removeAttribute("aria-busy");
  if (note) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = note;
    turn.meta.append(p);
  }
}

// -- the event stream -----------------------------------------------------------------------------------
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

async function ask(question) {
  showError("");
  addUserTurn(question);
  const turn = addAssistantTurn();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const body = { question, mode: $("mode").value };
  if (state.sessionId) body.session_id = state.sessionId;
  let finished = false;
  try {
    const response = await fetch(api("chat"), {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      let message = "";
      try { message = (await response.json()).error.message; } catch { /* not JSON */ }
      finishTurn(turn, describe(response.status, message));
      showError(describe(response.status, message));
      return;
    }
    for await (const event of events(response)) {
      if (event.name === "retrieval") {
        if (event.data.session_id && event.data.session_id !== state.sessionId) {
          state.sessionId = event.data.session_id;
          loadSessions();
        }
        renderRetrieval(turn, event.data);
      } else if (event.name === "token") {
        turn.text += event.data.text;
        renderAnswer(turn);
      } else if (event.name === "done") {
        renderDone(turn, event.data);
        finished = true;
      } else if (event.name === "error") {
        finished = true;
        finishTurn(turn, describe(event.data.status, event.data.message));
        showError(describe(event.data.status, event.data.message));
      }
    }
    if (!finished) {
      showError("The connection dropped before the answer finished; what arrived is shown above.");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      finishTurn(turn, "Stopped.");
    } else {
      showError("The connection dropped before the answer finished; what arrived is shown above.");
    }
  } finally {
    finishTurn(turn);
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// -- conversations ----------------------------------------------------------------------------------------
async function loadSessions() {
  try {
    const response = await fetch(api("chat/sessions"), { headers: headers() });
    if (!response.ok) return;
    state.sessions = (await response.json()).sessions;
  } catch { return; }
  const list = $("conversations");
  list.replaceChildren(
    ...state.sessions.map((s) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = s.title;
      button.dataset.session = s.session_id;
      if (s.session_id === state.sessionId) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openSession(s.session_id));
      li.append(button);
      return li;
    }),
  );
}

async function openSession(sessionId) {
  showError("");
  const response = await fetch(api(`chat/sessions/${sessionId}`), { headers: headers() });
  if (!response.ok) {
    showError(describe(response.status, ""));
    return;
  }
  state.sessionId = sessionId;
  $("log").replaceChildren();
  $("banner").hidden = true;
  for (const stored of (await response.json()).turns) {
    addUserTurn(stored.question);
    const turn = addAssistantTurn();
    turn.text = stored.answer;
    turn.citations = stored.citations;
    renderAnswer(turn);
    const query = document.createElement("p");
    query.className = "retrieval-query";
    query.textContent = `Retrieval query: ${stored.retrieval_query}`;
    turn.meta.append(query);
    finishTurn(turn, stored.status === "done" ? "" : `(answer ${stored.status})`);
  }
  loadSessions();
}

function newChat() {
  state.controller?.abort();
  state.sessionId = null;
  $("log").replaceChildren();
  $("banner").hidden = true;
  showError("");
  loadSessions();
  $("question").focus();
}

// -- upload -----------------------------------------------------------------------------------------------
async function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  const status = $("upload-status");
  if (!file) return;
  status.textContent = `Uploading ${file.name}…`;
  try {
    const grant = await fetch(api("uploads"), {
      method: "POST", headers: headers(), body: JSON.stringify({ filename: file.name }),
    });
    if (!grant.ok) {
      let message = "";
      try { message = (await grant.json()).error.message; } catch { /* not JSON */ }
      status.textContent = describe(grant.status, message);
      return;
    }
    const { url, key } = await grant.json();
    const put = await fetch(url, { method: "PUT", body: file });
    if (!put.ok) {
      status.textContent = `The upload to storage failed (HTTP ${put.status}).`;
      return;
    }
    status.textContent = `${file.name} uploaded; indexing…`;
    for (let i = 0; i < 300; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const reply = await fetch(api(`uploads/status?key=${encodeURIComponent(key)}`), { headers: headers() });
      if (!reply.ok) continue;
      const s = await reply.json();
      if (s.status === "indexed") {
        status.textContent = `${file.name} is answerable (${s.chunks} chunks indexed).`;
        return;
      }
      if (s.status === "failed") {
        status.textContent = `${file.name} could not be indexed: ${s.reason || s.error}.`;
        return;
      }
    }
    status.textContent = `${file.name} is still being indexed; ask again in a while.`;
  } catch {
    status.textContent = "The upload failed: the connection dropped.";
  }
}

// -- wiring -----------------------------------------------------------------------------------------------
function init() {
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.controller) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", newChat);
  $("upload-form").addEventListener("submit", upload);
  loadSessions();
}

init();
