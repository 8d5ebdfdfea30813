// Sluice console. Every piece of data goes into the DOM as text
// (textContent / createTextNode), never as markup: message keys, values
// and headers come from anyone who can produce.
"use strict";

const POLL_INTERVAL_MS = 2000;
const view = document.getElementById("view");
const statusLine = document.getElementById("status");
let generation = 0;
let poller = null;

// el("td", {class: "num"}, "text", childNode, ...): text arguments become text nodes.
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick" || name === "oninput" || name === "onsubmit") {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows, numeric) {
  const head = el("tr", {}, ...headers.map((name) => el("th", {}, name)));
  const body = rows.map((row) =>
    el("tr", {}, ...row.map((cell, index) =>
      el("td", numeric && numeric.includes(index) ? { class: "num" } : {}, cell))));
  if (rows.length === 0) body.push(el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none")));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function card(label, value, bad) {
  return el("div", { class: bad ? "card bad" : "card" },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function bytes(count) {
  if (!count) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let index = 0;
  let value = count;
  while (value >= 1024 && index < units.length - 1) { value /= 1024; index += 1; }
  return value.toFixed(index === 0 ? 0 : 1) + " " + units[index];
}

function duration(ms) {
  if (ms === null || ms === undefined) return "unknown";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

function time(ms) {
  return new Date(Number(ms)).toISOString();
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function postJson(url, payload) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "status error" : "status";
}

// Renders a view; live ones are fetched again every POLL_INTERVAL_MS.
function show(render, live) {
  generation += 1;
  const mine = generation;
  if (poller) clearInterval(poller);
  poller = null;
  const refresh = async () => {
    try {
      const nodes = await render();
      if (mine !== generation) return;
      view.replaceChildren(...nodes.filter((node) => node));
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    } catch (error) {
      if (mine === generation) setStatus("error: " + error.message, true);
    }
  };
  view.replaceChildren(el("p", { class: "muted" }, "loading…"));
  refresh();
  if (live) poller = setInterval(refresh, POLL_INTERVAL_MS);
}

async function clusterView() {
  const cluster = await getJson("/api/cluster");
  const nodes = cluster.nodes.map((node) => [
    node.kind, node.node_id, node.address,
    el("span", { class: "health-" + node.health.replace(/ /g, "-") }, node.health),
    duration(node.lease_remaining_ms), node.partitions, node.segments,
    node.disk_total_bytes ? bytes(node.disk_free_bytes) + " / " + bytes(node.disk_total_bytes) : "",
    node.detail,
  ]);
  const down = cluster.down_nodes.map((node) => [
    node.kind, node.node_id, node.address,
    el("span", { class: "health-down" }, "down"), time(node.last_seen_ms),
  ]);
  return [
    el("h2", {}, "Cluster"),
    el("div", { class: "cards", id: "cluster-cards" },
      card("assigner", cluster.active_assigner || "none (election)", !cluster.active_assigner),
      card("topics", cluster.topics), card("partitions", cluster.partitions),
      card("offline partitions", cluster.offline_partitions, cluster.offline_partitions > 0),
      card("segments", cluster.segments),
      card("under-replicated segments", cluster.under_replicated_segments,
        cluster.under_replicated_segments > 0),
      card("down nodes", cluster.down_nodes.length, cluster.down_nodes.length > 0),
      card("metadata", cluster.metadata_backend)),
    el("h3", {}, "Nodes"),
    table(["kind", "id", "address", "health", "lease left", "partitions", "segments", "disk free", "detail"],
      nodes, [5, 6]),
    el("h3", {}, "Down nodes (seen by this console, lease gone)"),
    table(["kind", "id", "address", "health", "last seen"], down),
  ];
}

function createTopicForm() {
  const name = el("input", { id: "create-name", placeholder: "topic name", maxlength: 249 });
  const partitions = el("input", { id: "create-partitions", type: "number", min: 1, max: 4096, value: 1 });
  const message = el("div", { class: "message", id: "create-message" });
  const confirmArea = el("span", {});
  const ask = el("button", { id: "create-ask", type: "button", onclick: () => {
    const count = Number(partitions.value);
    const confirmButton = el("button", { id: "create-confirm", type: "button", onclick: async () => {
      confirmArea.replaceChildren();
      try {
        const done = await postJson("/api/actions/create-topic", { name: name.value, partitions: count });
        message.className = "message ok";
        message.textContent = "created " + done.created;
      } catch (error) {
        message.className = "message error";
        message.textContent = error.message;
      }
    } }, "Confirm");
    const cancel = el("button", { type: "button", onclick: () => confirmArea.replaceChildren() }, "Cancel");
    confirmArea.replaceChildren(
      el("span", { id: "create-question" }, " Create topic “" + name.value + "” with " + count + " partition(s)? "),
      confirmButton, cancel);
  } }, "Create topic…");
  return el("form", { onsubmit: (event) => event.preventDefault() },
    el("label", {}, "Name ", name), el("label", {}, "Partitions ", partitions), ask, confirmArea, message);
}

function topicsView() {
  const form = createTopicForm();
  const listing = el("div", { id: "topic-list" });
  let mine = null;
  return async () => {
    const answer = await getJson("/api/topics");
    const rows = answer.topics.map((topic) => [
      el("a", { href: "#topic/" + encodeURIComponent(topic.name) }, topic.name),
      topic.config ? topic.config.partitions : "?",
      topic.config ? topic.config.durability : "?",
      topic.config ? duration(topic.config.retention_ms) : "?",
      time(topic.created_at_ms),
    ]);
    listing.replaceChildren(table(["topic", "partitions", "durability", "retention", "created"], rows, [1]));
    if (!mine) mine = [el("h2", {}, "Topics"), form, listing];
    return mine;
  };
}

function deleteTopicPanel(name) {
  const typed = el("input", { id: "delete-confirm", placeholder: "type the topic name" });
  const message = el("div", { class: "message", id: "delete-message" });
  const button = el("button", { id: "delete-topic", class: "danger", type: "button", disabled: "", onclick: async () => {
    try {
      await postJson("/api/actions/delete-topic", { name: name, confirm: typed.value });
      message.className = "message ok";
      message.textContent = "deleted " + name;
    } catch (error) {
      message.className = "message error";
      message.textContent = error.message;
    }
  } }, "Delete topic");
  typed.addEventListener("input", () => { button.disabled = typed.value !== name; });
  return el("div", { class: "panel" },
    el("strong", {}, "Delete this topic"),
    el("p", { class: "muted" }, "Deletes the topic and its data. Type its name to confirm."),
    typed, " ", button, message);
}

function topicView(name) {
  const danger = deleteTopicPanel(name);
  return async () => {
    const topic = await getJson("/api/topics/" + encodeURIComponent(name));
    const config = topic.topic && topic.topic.config ? topic.topic.config : {};
    const configRows = Object.entries(config).map(([key, value]) => [key, value]);
    const partitions = topic.partitions.map((partition) => [
      partition.partition, partition.owner || "none", partition.owner_address, partition.epoch,
      partition.log_start_offset ?? "?", partition.high_watermark ?? "?", partition.segments.length,
      el("a", { href: "#browse?topic=" + encodeURIComponent(name) + "&partition=" + partition.partition }, "browse"),
    ]);
    const segments = [];
    for (const partition of topic.partitions) {
      for (const segment of partition.segments) {
        segments.push([partition.partition, segment.segment_id, segment.state, segment.base_offset,
          segment.end_offset, bytes(segment.size_bytes), segment.replicas]);
      }
    }
    const subscriptions = topic.subscriptions.map((entry) => [typeof entry === "string" ? entry : entry.error]);
    return [
      el("h2", {}, "Topic " + name),
      el("h3", {}, "Partitions"),
      table(["partition", "owner", "owner address", "epoch", "log start", "high watermark", "segments", ""],
        partitions, [0, 3, 4, 5, 6]),
      el("h3", {}, "Configuration"), table(["setting", "value"], configRows),
      el("h3", {}, "Subscriptions"), table(["name"], subscriptions),
      el("h3", {}, "Segments"),
      table(["partition", "segment", "state", "base offset", "end offset", "size", "replicas"], segments, [0, 3, 4, 6]),
      danger,
    ];
  };
}

// A group's lag: unknown partitions (their owner could not be asked) are
// never counted as 0.
function groupLag(group) {
  if (group.lag !== null && group.lag !== undefined) return group.lag;
  if (group.lag_at_least === undefined) return "";
  return "at least " + group.lag_at_least + " (" + group.lag_unknown_partitions + " partitions unknown)";
}

async function consumersView() {
  const answer = await getJson("/api/consumers");
  const groups = answer.groups.map((group) => [group.group, group.error || group.state || "",
    group.members ?? "", groupLag(group), (group.topics || []).join(", ")]);
  const subscriptions = answer.subscriptions.map((sub) => [sub.topic, sub.name || "", sub.error || sub.type,
    sub.backlog_messages ?? "", duration(sub.oldest_unacknowledged_age_ms),
    sub.drain_rate === undefined ? "" : sub.drain_rate.toFixed(1) + "/s",
    duration(sub.estimated_drain_ms), sub.consumers ?? "", sub.pressure || ""]);
  return [
    el("h2", {}, "Consumer groups"),
    table(["group", "state", "members", "lag (records)", "topics"], groups, [2, 3]),
    answer.groups_cut ? el("p", { class: "marker" }, "more groups than described") : null,
    el("h2", {}, "Subscriptions"),
    table(["topic", "subscription", "type", "backlog (records)", "oldest unacked (time lag)", "drain rate",
      "drain estimate", "consumers", "pressure"], subscriptions, [3, 7]),
    answer.subscriptions_cut ? el("p", { class: "marker" }, "more subscriptions than described") : null,
  ];
}

function shown(rendered) {
  if (!rendered) return el("span", { class: "muted" }, "(none)");
  const parts = [el("span", {}, rendered.text)];
  if (rendered.encoding === "hex") parts.unshift(el("span", { class: "muted" }, "hex: "));
  if (rendered.truncated) parts.push(el("span", { class: "marker" }, " … truncated (" + rendered.size + " bytes)"));
  return el("span", {}, ...parts);
}

function browseView(params) {
  const input = (id, label, value, type) =>
    el("label", {}, label + " ", el("input", { id: id, type: type || "text", value: value || "" }));
  const form = el("form", { id: "browse-form" },
    input("browse-topic", "Topic", params.get("topic")),
    input("browse-partition", "Partition", params.get("partition") || "0", "number"),
    input("browse-offset", "Offset", params.get("offset"), "number"),
    input("browse-time", "or time (RFC 3339 / unix ms)", params.get("time")),
    input("browse-limit", "Records", params.get("limit") || "20", "number"),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const field of ["topic", "partition", "offset", "time", "limit"]) {
      const value = document.getElementById("browse-" + field).value.trim();
      if (value) next.set(field, value);
    }
    location.hash = "#browse?" + next.toString();
  });
  const results = el("div", { id: "browse-results" });
  const load = async () => {
    if (!params.get("topic")) return [el("h2", {}, "Messages"), form, results];
    const query = new URLSearchParams();
    for (const field of ["topic", "partition", "offset", "limit"]) {
      if (params.get(field)) query.set(field, params.get(field));
    }
    const when = params.get("time");
    if (when) query.set("time_ms", /^\d+$/.test(when) ? when : String(Date.parse(when)));
    const page = await getJson("/api/messages?" + query.toString());
    const rows = page.records.map((record) => record.error
      ? [record.offset, "", el("span", { class: "marker" }, record.error), "", "", ""]
      : [record.offset, time(record.timestamp_ms), shown(record.key), shown(record.value),
        el("span", {}, ...record.headers.map((header) =>
          el("div", {}, header.name + " = ", shown(header.value)))),
        record.tags.join(", ")]);
    const body = table(["offset", "timestamp", "key", "value", "headers", "tags"], rows, [0]);
    for (const row of body.querySelectorAll("tbody tr")) {
      for (const index of [2, 3, 4]) if (row.children[index]) row.children[index].classList.add("data");
    }
    const next = new URLSearchParams(params);
    next.delete("time");
    next.set("offset", page.next_offset);
    results.replaceChildren(...[
      el("p", { class: "muted" }, "partition " + page.partition + ": offsets " + page.log_start_offset +
        " to " + page.high_watermark + "; showing " + page.first_offset + " to " + page.next_offset),
      body,
      page.next_offset < page.high_watermark ? el("a", { href: "#browse?" + next.toString(), id: "browse-next" }, "next page") : null,
    ].filter((node) => node));
    return [el("h2", {}, "Messages"), form, results];
  };
  return load;
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "cluster";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.id === "nav-" + path.split("/")[0]);
  }
  if (path === "cluster") show(clusterView, true);
  else if (path === "topics") show(topicsView(), true);
  else if (path.startsWith("topic/")) show(topicView(decodeURIComponent(path.slice(6))), true);
  else if (path === "consumers") show(consumersView, true);
  else if (path === "browse") show(browseView(params), false);
  else view.replaceChildren(el("p", {}, "no such page"));
}

window.addEventListener("hashchange", route);
route();
