// Live board (server-sent events) and the call page's player: small, no framework.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;   // textContent: transcripts are never HTML
  return e;
}

function renderLive(box, calls) {
  const link = box.dataset.appel;
  box.replaceChildren();
  if (!calls.length) { box.append(el("p", "empty", "Aucun appel en ce moment.")); return; }
  for (const c of calls) {
    const card = el("article", "call-card" + (c.state !== "avec l'assistant" ? " escalated" : ""));
    card.dataset.id = c.id;
    const h = el("h2");
    const a = el("a", null, c.caller);
    a.href = link.replace("ID", c.id);
    h.append(a, document.createTextNode(" — " + c.state));
    const meta = el("p", "meta", "Durée : " + c.duration_s + " s" + (c.reason ? " — Motif : " + c.reason : ""));
    const ol = el("ol", "mini-transcript");
    for (const t of c.transcript) {
      const li = el("li", t.speaker);
      li.append(el("span", "who", (t.speaker === "caller" ? "Appelant" : "Assistant") + " :"), document.createTextNode(" " + t.text));
      ol.append(li);
    }
    card.append(h, meta, el("p", "summary", c.summary), ol);
    box.append(card);
  }
}

function startLive() {
  const box = document.getElementById("direct");
  if (!box || !window.EventSource) return;
  const status = document.getElementById("etat-flux");
  const src = new EventSource(box.dataset.flux);
  src.addEventListener("appels", (ev) => { renderLive(box, JSON.parse(ev.data)); status.textContent = ""; });
  src.onerror = () => { status.textContent = "Connexion perdue, nouvelle tentative…"; };
}

function startPlayer() {
  const audio = document.getElementById("audio");
  if (!audio) return;
  const turns = Array.from(document.querySelectorAll("#transcript .turn"));
  document.querySelectorAll("button.seek").forEach((b) => b.addEventListener("click", () => {
    audio.currentTime = parseFloat(b.dataset.start);
    audio.play().catch(() => {});
  }));
  audio.addEventListener("timeupdate", () => {
    let current = null;
    for (const t of turns) if (parseFloat(t.dataset.start) <= audio.currentTime + 0.05) current = t;
    turns.forEach((t) => t.classList.toggle("playing", t === current));
  });
}

document.addEventListener("DOMContentLoaded", () => { startLive(); startPlayer(); });
