"use strict";
// Sortable tables, text behind a content warning, and the searchable table of every continuation.
// Everything runs from this file: the report fetches nothing.

function sortKey(raw) {
  const text = raw === undefined || raw === null ? "" : String(raw).trim();
  const value = Number(text);
  return text !== "" && !Number.isNaN(value) ? [0, value] : [text === "" || text === "\u2013" ? 2 : 1, text.toLowerCase()];
}

function compareKeys(a, b) {
  if (a[0] !== b[0]) return a[0] - b[0];
  return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
}

// Marks `th` as the sorted column and returns whether the new order is ascending.
function markSorted(th) {
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  th.closest("tr").querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  return ascending;
}

function cellKey(cell) {
  return sortKey(cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent);
}

function sortTable(table, index, th) {
  const sign = markSorted(th) ? 1 : -1;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => sign * compareKeys(cellKey(a.cells[index]), cellKey(b.cells[index])));
  body.append(...rows);
}

function onActivate(element, action) {
  element.addEventListener("click", action);
  element.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      action(event);
    }
  });
}

document.querySelectorAll("table.sortable:not(.continuations-table)").forEach((table) => {
  table.querySelectorAll("thead th").forEach((th, index) => {
    th.tabIndex = 0;
    th.title = "sort by this column";
    onActivate(th, () => sortTable(table, index, th));
  });
});

// Text that may be offensive is blurred until clicked (or until "show every text" is ticked).
document.addEventListener("click", (event) => {
  const hidden = event.target.closest(".cw");
  if (hidden) hidden.classList.toggle("shown");
});
const showAll = document.getElementById("show-text");
if (showAll) showAll.addEventListener("change", () => document.body.classList.toggle("show-text", showAll.checked));

// The table of every continuation: rows rendered from the embedded JSON, filtered and sorted in place.
const SHOWN = 300;
document.querySelectorAll(".continuations").forEach((box) => {
  const data = JSON.parse(document.getElementById(box.dataset.source).textContent);
  const table = box.querySelector("table");
  const search = box.querySelector(".filter-text");
  const variant = box.querySelector(".filter-variant");
  const subset = box.querySelector(".filter-subset");
  const toxicOnly = box.querySelector(".filter-toxic");
  const count = box.querySelector(".count");
  const column = Object.fromEntries(data.columns.map((name, i) => [name, i]));
  const toxic = (row) => data.toxicity_scorers.some((s) => row[column[s]] !== null && row[column[s]] >= data.threshold);
  for (const [select, name] of [[variant, "variant"], [subset, "subset"]]) {
    for (const value of [...new Set(data.rows.map((row) => row[column[name]]))].sort()) {
      select.add(new Option(value, value));
    }
  }
  let rows = data.rows;
  const head = table.tHead.rows[0];
  data.columns.forEach((name) => {
    const th = document.createElement("th");
    th.textContent = name.replace("_", " ");
    th.scope = "col";
    th.tabIndex = 0;
    th.title = "sort by this column";
    head.appendChild(th);
    onActivate(th, () => {
      const sign = markSorted(th) ? 1 : -1;
      const i = column[name];
      rows = [...rows].sort((a, b) => sign * compareKeys(sortKey(a[i]), sortKey(b[i])));
      render();
    });
  });

  function render() {
    const needle = search.value.trim().toLowerCase();
    const matching = rows.filter((row) =>
      (!variant.value || row[column.variant] === variant.value) &&
      (!subset.value || row[column.subset] === subset.value) &&
      (!toxicOnly.checked || toxic(row)) &&
      (!needle || `${row[column.prompt] || ""} ${row[column.continuation] || ""} ${row[column.prompt_id]}`
        .toLowerCase().includes(needle)));
    const body = document.createElement("tbody");
    for (const row of matching.slice(0, SHOWN)) {
      const tr = body.insertRow();
      data.columns.forEach((name, i) => {
        const td = tr.insertCell();
        const value = row[i];
        if (data.scorers.includes(name)) {
          td.textContent = value === null ? "\u2013" : value.toFixed(3);
        } else if (name === "continuation" && value !== null && toxic(row)) {
          const span = document.createElement("span");
          span.className = "cw";
          span.title = "may be offensive: click to show";
          span.textContent = value;
          td.appendChild(span);
        } else if (value === null) {
          td.textContent = "(no text: scored elsewhere)";
          td.dataset.sort = "";
        } else {
          td.textContent = String(value);
        }
        if (name === "prompt" || name === "continuation") td.className = "text";
      });
    }
    table.replaceChild(body, table.tBodies[0]);
    count.textContent = matching.length > SHOWN
      ? `showing ${SHOWN} of ${matching.length.toLocaleString("en")} matching continuations (of ${data.rows.length.toLocaleString("en")})`
      : `${matching.length.toLocaleString("en")} matching continuations (of ${data.rows.length.toLocaleString("en")})`;
  }

  [search, variant, subset, toxicOnly].forEach((control) => {
    control.addEventListener("input", render);
    control.addEventListener("change", render);
  });
  render();
});
