// What the page knows, shared by its modules: one object, changed in place.

export const REFRESH_MIN_MS = 5000;

export const state = {
  rows: new Map(), // name -> {status, config}
  shown: [], // names, filtered and sorted
  sort: { key: "state", dir: 1 },
  filter: "",
  stateFilter: "",
  sparks: new Map(), // name -> [{ok, duration_seconds}], oldest first
  about: null,
  aboutAt: 0,
  lastEventId: null,
  detail: null, // the workload in the detail view
  rowHeight: 36,
  configNames: "",
  configErrors: new Map(), // workload -> messages of its file's problems
};
