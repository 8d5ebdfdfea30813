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

// An action behind a confirmation: `ask` (a button) shows `question()`
// with Confirm and Cancel; Confirm posts `payload()` to `url` and shows
// `done(answer)` or the error. `id` prefixes the elements' ids.
function confirmedAction(id, label, url, question, payload, done, danger) {
  const message = el("div", { class: "message", id: id + "-message" });
  const confirmArea = el("span", {});
  const ask = el("button", { id: id + "-ask", type: "button", class: danger ? "danger" : "", onclick: () => {
    let text;
    try { text = question(); } catch (error) {
      message.className = "message error";
      message.textContent = error.message;
      return;
    }
    const confirmButton = el("button", { id: id + "-confirm", type: "button", onclick: async () => {
      confirmArea.replaceChildren();
      try {
        const answer = await postJson(url, payload());
        message.className = "message ok";
        message.replaceChildren(done(answer));
      } catch (error) {
        message.className = "message error";
        message.textContent = error.message;
      }
    } }, "Confirm");
    const cancel = el("button", { type: "button", onclick: () => confirmArea.replaceChildren() }, "Cancel");
    confirmArea.replaceChildren(el("span", { id: id + "-question" }, " " + text + " "), confirmButton, cancel);
  } }, label);
  return [ask, confirmArea, message];
}

function field(id, label, attributes) {
  const input = el("input", Object.assign({ id: id }, attributes || {}));
  return [input, el("label", {}, label + " ", input)];
}

// A whole number typed in a form, or an Error naming the field.
function wholeNumber(input, name) {
  const text = input.value.trim();
  if (!/^-?\d+$/.test(text)) throw new Error(name + " must be a whole number");
  return Number(text);
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

const ALTERABLE = ["retention_ms", "retention_bytes", "message_ttl_ms", "segment_bytes", "max_batch_bytes"];

function alterTopicPanel(name) {
  const inputs = ALTERABLE.map((setting) => field("alter-" + setting, setting, { size: 14, placeholder: "unchanged" }));
  const changes = () => {
    const asked = {};
    ALTERABLE.forEach((setting, index) => {
      if (inputs[index][0].value.trim() !== "") asked[setting] = wholeNumber(inputs[index][0], setting);
    });
    if (Object.keys(asked).length === 0) throw new Error("type a new value for at least one setting");
    return asked;
  };
  const action = confirmedAction("alter", "Change settings…", "/api/actions/alter-topic",
    () => "Change " + Object.entries(changes()).map(([k, v]) => k + " to " + v).join(", ") + " on “" + name + "”?",
    () => ({ name: name, changes: changes() }),
    () => "settings changed on " + name);
  return el("div", { class: "panel" }, el("strong", {}, "Change settings"),
    el("p", { class: "muted" }, "Applies to running partitions; leave a field empty to keep it."),
    ...inputs.map((pair) => pair[1]), ...action);
}

function addPartitionsPanel(name) {
  const [total, label] = field("grow-partitions", "New partition count", { type: "number", min: 1, max: 4096 });
  const action = confirmedAction("grow", "Add partitions…", "/api/actions/add-partitions",
    () => "Grow “" + name + "” to " + wholeNumber(total, "the partition count") +
      " partitions? Keys hash to different partitions from then on: their order is not kept across the change.",
    () => ({ name: name, partitions: Number(total.value) }),
    (answer) => el("span", {}, "now " + answer.partitions + " partitions. " + answer.notice));
  return el("div", { class: "panel" }, el("strong", {}, "Add partitions"), " ", label, ...action);
}

function subscriptionPanel(topic) {
  const [name, nameLabel] = field("skip-name", "Subscription");
  const [count, countLabel] = field("skip-count", "Messages", { type: "number", min: 1 });
  const skip = confirmedAction("skip", "Skip…", "/api/actions/skip-subscription",
    () => "Skip the next " + wholeNumber(count, "the count") + " message(s) of subscription “" + name.value + "”?",
    () => ({ topic: topic, name: name.value, count: Number(count.value) }),
    (answer) => "skipped " + answer.skipped);
  const clear = confirmedAction("clear", "Clear backlog…", "/api/actions/skip-subscription",
    () => "Acknowledge every waiting message of subscription “" + name.value + "”? They will not be delivered.",
    () => ({ topic: topic, name: name.value, clear: true, confirm: name.value }),
    (answer) => "cleared " + answer.skipped + " message(s)", true);
  return el("div", { class: "panel" }, el("strong", {}, "Subscription backlog"), " ",
    nameLabel, countLabel, ...skip, " ", ...clear);
}

function topicView(name) {
  const danger = deleteTopicPanel(name);
  const alter = alterTopicPanel(name);
  const grow = addPartitionsPanel(name);
  const backlog = subscriptionPanel(name);
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
    const rate = topic.records_per_second;
    return [
      el("h2", {}, "Topic " + name),
      el("div", { class: "cards" },
        card("records in per second", rate === null || rate === undefined ? "measuring…" : rate.toFixed(1)),
        card("partitions", topic.partitions.length)),
      el("h3", {}, "Partitions"),
      table(["partition", "owner", "owner address", "epoch", "log start", "high watermark", "segments", ""],
        partitions, [0, 3, 4, 5, 6]),
      el("h3", {}, "Configuration"), table(["setting", "value"], configRows),
      alter, grow,
      el("h3", {}, "Subscriptions"), table(["name"], subscriptions), backlog,
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

function rate(value) {
  return value === null || value === undefined ? "measuring…" : value.toFixed(1) + "/s";
}

function groupPanel() {
  const [group, groupLabel] = field("reset-group", "Group");
  const [topic, topicLabel] = field("reset-topic", "Topic");
  const to = el("select", { id: "reset-to" }, ...["earliest", "latest", "offset", "time", "shift"].map(
    (value) => el("option", { value: value }, value)));
  const [value, valueLabel] = field("reset-value", "Value (offset, unix ms or shift)", { size: 14 });
  const plan = el("div", { id: "reset-plan" });
  const payload = (dryRun) => {
    const asked = { group: group.value, topic: topic.value, to: to.value, dry_run: dryRun };
    if (["offset", "time", "shift"].includes(to.value)) asked.value = wholeNumber(value, "the value");
    return asked;
  };
  const planTable = (answer) => table(["partition", "committed now", "moves to", "log start", "high watermark"],
    answer.partitions.map((p) => [p.partition, p.current ?? "none", p.target, p.log_start_offset, p.high_watermark]),
    [0, 1, 2, 3, 4]);
  const preview = el("button", { id: "reset-preview", type: "button", onclick: async () => {
    plan.replaceChildren();
    try {
      const answer = await postJson("/api/actions/reset-group-offsets", payload(true));
      const apply = confirmedAction("reset", "Apply this reset…", "/api/actions/reset-group-offsets",
        () => "Commit these offsets for group “" + group.value + "” on “" + topic.value + "”?",
        () => payload(false),
        (done) => el("span", {}, "offsets reset", planTable(done)), true);
      plan.replaceChildren(el("p", { class: "muted" }, "Dry run: nothing changed yet."), planTable(answer), ...apply);
    } catch (error) {
      plan.replaceChildren(el("div", { class: "message error" }, error.message));
    }
  } }, "Preview reset");
  const [typed, typedLabel] = field("delete-group-confirm", "Type the group to delete");
  const remove = confirmedAction("delete-group", "Delete group…", "/api/actions/delete-group",
    () => "Delete group “" + typed.value + "” and its committed offsets?",
    () => ({ group: typed.value, confirm: typed.value }),
    (answer) => "deleted " + answer.deleted_group, true);
  return el("div", { class: "panel" },
    el("strong", {}, "Reset a group's offsets (the group must have no members)"), el("br", {}),
    groupLabel, topicLabel, el("label", {}, "To ", to), valueLabel, preview, plan,
    el("hr", {}), typedLabel, ...remove);
}

function consumersView() {
  const panel = groupPanel();
  const listing = el("div", {});
  return async () => {
    const answer = await getJson("/api/consumers");
    const groups = answer.groups.map((group) => [group.group, group.error || group.state || "",
      group.members ?? "", groupLag(group),
      group.time_lag_ms === undefined ? "" : duration(group.time_lag_ms) + (group.time_lag_complete ? "" : " (partial)"),
      group.error ? "" : rate(group.consume_rate),
      group.error ? "" : duration(group.estimated_drain_ms),
      (group.topics || []).join(", ")]);
    const subscriptions = answer.subscriptions.map((sub) => [sub.topic, sub.name || "", sub.error || sub.type,
      sub.backlog_messages ?? "", duration(sub.oldest_unacknowledged_age_ms),
      sub.drain_rate === undefined ? "" : sub.drain_rate.toFixed(1) + "/s",
      duration(sub.estimated_drain_ms), sub.consumers ?? "", sub.pressure || ""]);
    listing.replaceChildren(
      table(["group", "state", "members", "lag (records)", "lag (time)", "consume rate", "drain estimate", "topics"],
        groups, [2, 3]),
      answer.groups_cut ? el("p", { class: "marker" }, "more groups than described") : el("span", {}),
      el("h2", {}, "Subscriptions"),
      table(["topic", "subscription", "type", "backlog (records)", "oldest unacked (time lag)", "drain rate",
        "drain estimate", "consumers", "pressure"], subscriptions, [3, 7]),
      answer.subscriptions_cut ? el("p", { class: "marker" }, "more subscriptions than described") : el("span", {}));
    return [el("h2", {}, "Consumer groups"), listing, panel];
  };
}

function shown(rendered) {
  if (!rendered) return el("span", { class: "muted" }, "(none)");
  const parts = [el("span", {}, rendered.text)];
  if (rendered.encoding === "hex") parts.unshift(el("span", { class: "muted" }, "hex: "));
  if (rendered.truncated) parts.push(el("span", { class: "marker" }, " … truncated (" + rendered.size + " bytes)"));
  return el("span", {}, ...parts);
}

const BROWSE_FIELDS = ["topic", "partition", "offset", "time", "limit", "key", "tag", "subscription"];

// A "why" button for one message: asks what `subscription` did with it.
function whyButton(topic, partition, offset, subscription) {
  const answer = el("span", { class: "why-answer" });
  const button = el("button", { type: "button", class: "why", onclick: async () => {
    const query = new URLSearchParams({ topic: topic, partition: partition, offset: offset, subscription: subscription });
    try {
      const why = await getJson("/api/messages/why?" + query.toString());
      answer.replaceChildren(el("strong", {}, why.state), " " + why.explanation);
    } catch (error) {
      answer.replaceChildren(el("span", { class: "marker" }, error.message));
    }
  } }, "why");
  return el("span", {}, button, " ", answer);
}

function recordRows(records, params, withPartition) {
  const subscription = params.get("subscription");
  const headers = ["offset", "timestamp", "key", "value", "headers", "tags"];
  if (withPartition) headers.unshift("partition");
  if (subscription) headers.push("why (" + subscription + ")");
  const rows = records.map((record) => {
    const partition = withPartition ? record.partition : Number(params.get("partition") || 0);
    const row = record.error
      ? [record.offset, "", el("span", { class: "marker" }, record.error), "", "", ""]
      : [record.offset, time(record.timestamp_ms), shown(record.key), shown(record.value),
        el("span", {}, ...record.headers.map((header) =>
          el("div", {}, header.name + " = ", shown(header.value)))),
        record.tags.join(", ")];
    if (withPartition) row.unshift(partition);
    if (subscription) row.push(whyButton(params.get("topic"), partition, record.offset, subscription));
    return row;
  });
  const body = table(headers, rows, withPartition ? [0, 1] : [0]);
  const dataColumns = withPartition ? [3, 4, 5] : [2, 3, 4];
  for (const row of body.querySelectorAll("tbody tr")) {
    for (const index of dataColumns) if (row.children[index]) row.children[index].classList.add("data");
  }
  return body;
}

async function browsePage(params) {
  const query = new URLSearchParams();
  for (const name of ["topic", "partition", "offset", "limit"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  const when = params.get("time");
  if (when) query.set("time_ms", /^\d+$/.test(when) ? when : String(Date.parse(when)));
  const page = await getJson("/api/messages?" + query.toString());
  const next = new URLSearchParams(params);
  next.delete("time");
  next.set("offset", page.next_offset);
  return [
    el("p", { class: "muted" }, "partition " + page.partition + ": offsets " + page.log_start_offset +
      " to " + page.high_watermark + "; showing " + page.first_offset + " to " + page.next_offset),
    recordRows(page.records, params, false),
    page.next_offset < page.high_watermark ? el("a", { href: "#browse?" + next.toString(), id: "browse-next" }, "next page") : null,
  ];
}

async function findPage(params) {
  const query = new URLSearchParams();
  for (const name of ["topic", "key", "tag", "limit"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  const found = await getJson("/api/messages/find?" + query.toString());
  const searched = [params.get("key") ? "key “" + params.get("key") + "”" : null,
    params.get("tag") ? "tag “" + params.get("tag") + "”" : null].filter((part) => part).join(" and ");
  return [
    el("p", { class: "muted", id: "find-summary" }, found.records.length + " message(s) with " + searched +
      (found.continue_from.length ? " (more beyond this page)" : "")),
    recordRows(found.records, params, true),
    ...found.notes.map((note) => el("p", { class: "marker" }, note)),
  ];
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
    el("br", {}),
    input("browse-key", "or find by key", params.get("key")),
    input("browse-tag", "and/or tag", params.get("tag")),
    input("browse-subscription", "Explain for subscription", params.get("subscription")),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of BROWSE_FIELDS) {
      const value = document.getElementById("browse-" + name).value.trim();
      if (value) next.set(name, value);
    }
    location.hash = "#browse?" + next.toString();
  });
  const results = el("div", { id: "browse-results" });
  return async () => {
    if (params.get("topic")) {
      const finding = params.get("key") || params.get("tag");
      const nodes = finding ? await findPage(params) : await browsePage(params);
      results.replaceChildren(...nodes.filter((node) => node));
    }
    return [el("h2", {}, "Messages"), form, results];
  };
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
  else if (path === "consumers") show(consumersView(), true);
  else if (path === "browse") show(browseView(params), false);
  else view.replaceChildren(el("p", {}, "no such page"));
}

window.addEventListener("hashchange", route);
route();
