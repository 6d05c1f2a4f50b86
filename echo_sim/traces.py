"""Acceptance traces (TRACES.md, format version 1): the in-memory TraceSet, reader, writer, validator.

CONTRACT (fixed; other modules build against it; the traces work fills in the bodies):

TraceSet fields, R requests, P = Σ L_r positions, N nodes:
    header           dict      TRACES.md header (format_version, generator, command, models + sha256,
                               tokenizer, dataset, prompt_ids, decoding, width k, depth S,
                               max_new_tokens, created, absent_columns)
    request_ids      list[str] [R]
    prompt_len       int32 [R]
    output_len       int32 [R]   L_r
    position_offsets int64 [R+1] positions of request r: position_offsets[r] : position_offsets[r+1]
                                 (position t of request r is global index position_offsets[r] + t)
    target_token     int32 [P]   y_t
    draft_rank       int16 [P]   rank of y_t in the draft's top-16 at the teacher-forced prefix, -1 absent
    draft_prob       float32 [P] or None (draft's probability of y_t; None for chain-only imports)
    target_prob      float32 [P] or None (optional)
    spine_run        int32 [P]   consecutive positions from t (within the request) with draft_rank 0:
                                 what a greedy chain accepts at t (uncapped). Derived on load.
    node_offsets     int64 [P+1] nodes of position p: node_offsets[p] : node_offsets[p+1] (empty for
                                 chain-only imports)
    node_token, node_parent (int32, local, -1 = root child), node_depth (int8/int32), node_cond_prob,
    node_score (float32), node_on_path (bool)  [N]

Methods other modules use:
    TraceSet.lattice_batch(positions: int64 [bs], max_depth: int | None = None) -> trees.LatticeBatch
        gathers the lattices of those global positions (vectorised, no Python loop per request),
        truncated to depth <= max_depth, with spine_run of each position.
    TraceSet.width, .depth (k, S), .num_requests, .num_positions, .num_nodes, .has_confidences
    read_trace(path) -> TraceSet          validates everything; TraceError names file/request/position/field
    write_trace(path, trace) -> None      atomic (temp file + rename)
    class TraceError(ValueError)
"""
