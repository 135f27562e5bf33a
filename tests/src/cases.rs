//! The conformance cases. Each runs against a fresh namespace and asserts
//! behaviour; a case that needs a capability the backend lacks asserts the
//! precise `Unsupported` error instead (see [`gated!`](crate::gated)).

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use dl_repositories::{
    BatchFailure, ConflictKind, Error, Filter, Operation as Op, Patch, Query, Repository,
};
use uuid::Uuid;

use crate::entities::{Note, Specimen, UniqueSpecimen};
use crate::harness::{Case, CaseResult, Ctx, Need, Outcome};
use crate::{check, gated, ok};

const PASS: CaseResult = Ok(Outcome::Passed);

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every conformance case.
        pub static ALL: &[Case] = &[
            $( Case { name: stringify!($name), run: |ctx| Box::pin($name(ctx)) } ),*
        ];
    };
}

cases![
    insert_then_get,
    get_absent_is_none,
    insert_duplicate_key_conflicts,
    unique_field_conflicts_on_insert,
    unique_field_conflicts_on_update,
    unique_value_freed_by_update,
    unique_allows_many_nulls,
    delete_reports_existence,
    exists_reports_existence,
    integer_keys_round_trip,
    unicode_round_trips,
    large_value_round_trips,
    oversize_value_is_rejected,
    max_len_is_enforced,
    nul_character_is_rejected,
    injection_value_is_data,
    injection_key_is_data,
    injection_field_name_in_filter_is_rejected,
    injection_field_name_in_sort_is_rejected,
    injection_field_name_in_patch_is_rejected,
    all_types_round_trip,
    nulls_round_trip,
    timestamps_keep_milliseconds,
    json_round_trips,
    nan_is_rejected,
    long_key_is_rejected,
    update_sets_fields,
    update_absent_is_none,
    update_unsets_nullable,
    update_null_on_required_is_rejected,
    update_unknown_field_is_rejected,
    update_wrong_type_is_rejected,
    update_key_is_rejected,
    update_version_field_is_rejected,
    update_bumps_version,
    update_expected_version_matches,
    update_expected_version_conflicts,
    update_expect_version_without_version_field_is_rejected,
    empty_patch_is_rejected,
    patch_same_field_twice_is_rejected,
    update_is_partial,
    replace_bumps_version,
    replace_stale_version_conflicts,
    replace_absent_is_not_found,
    replace_without_version_field,
    upsert_inserts_then_overwrites,
    filter_eq,
    filter_eq_on_key,
    filter_ne_excludes_nulls,
    filter_ordering_operators,
    filter_dates_and_timestamps,
    filter_float_accepts_int,
    filter_in,
    filter_in_empty_matches_nothing,
    filter_in_large_list,
    filter_in_too_large_is_rejected,
    filter_in_null_is_rejected,
    filter_is_null,
    filter_not_is_null,
    filter_not_eq_includes_nulls,
    filter_prefix,
    filter_prefix_is_literal,
    filter_and_or_nested,
    filter_empty_and_or,
    filter_eq_null_is_rejected,
    filter_wrong_type_is_rejected,
    filter_order_on_bool_is_rejected,
    filter_on_json_is_rejected,
    filter_too_deep_is_rejected,
    filter_uuid,
    count_with_filter,
    count_all,
    list_defaults_to_key_order,
    sort_puts_nulls_first_ascending,
    sort_puts_nulls_last_descending,
    sort_ties_break_by_key,
    pages_have_no_duplicates_or_gaps,
    pages_survive_inserts_between_pages,
    pages_descending_with_nulls,
    cursor_never_carries_phi,
    cursor_garbage_is_rejected,
    cursor_of_another_query_is_rejected,
    limit_out_of_range_is_rejected,
    list_with_filter_and_limit,
    sort_on_json_is_rejected,
    insert_many_then_get_many,
    get_many_keeps_order_dedups_skips_missing,
    insert_many_repeated_key_conflicts,
    insert_many_existing_key,
    insert_many_invalid_entity_writes_nothing,
    insert_many_empty_is_noop,
    get_many_empty,
    insert_many_large_batch,
    transaction_commit_makes_writes_visible,
    transaction_rollback_discards_writes,
    transaction_drop_rolls_back,
    transaction_panic_rolls_back,
    transaction_uncommitted_writes_are_invisible,
    transaction_version_conflict_rolls_back_everything,
    transaction_nested_is_refused,
    transaction_calls_after_the_end_are_refused,
];

fn ids(items: &[Specimen]) -> Vec<String> {
    items.iter().map(|s| s.id.clone()).collect()
}

fn id(n: usize) -> String {
    format!("s{n:02}")
}

/// Inserts specimens s00..s(n-1) with rank = index.
async fn seed(ctx: &Ctx, n: usize) -> Result<Vec<Specimen>, String> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let s = Specimen::new(&id(i), i64::try_from(i).unwrap_or_default());
        ctx.specimens
            .insert(&s)
            .await
            .map_err(|e| format!("seed: {e}"))?;
        all.push(s);
    }
    Ok(all)
}

fn is_invalid<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

fn ts(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .unwrap_or_default()
}

async fn count_specimens(ctx: &Ctx) -> Result<u64, String> {
    ctx.specimens
        .count(&Filter::all())
        .await
        .map_err(|e| format!("count: {e}"))
}

/// One page's keys; in key order for a store whose listing is in its own
/// order (so the same expectations hold), when the query has no sort.
async fn list_ids(ctx: &Ctx, q: Query) -> Result<Result<Vec<String>, Error>, String> {
    let unordered = !ctx.ordered() && q.sort.is_empty();
    Ok(ctx.specimens.list(&q).await.map(|p| {
        let mut v = ids(&p.items);
        if unordered {
            v.sort();
        }
        v
    }))
}

// ---------------------------------------------------------------- CRUD

async fn insert_then_get(ctx: Ctx) -> CaseResult {
    let s = Specimen::new("a", 1);
    ok!(ctx.specimens.insert(&s).await);
    let got = ok!(ctx.specimens.get(&"a".to_owned()).await);
    check!(got.as_ref() == Some(&s));
    PASS
}

async fn get_absent_is_none(ctx: Ctx) -> CaseResult {
    check!(ok!(ctx.specimens.get(&"nope".to_owned()).await).is_none());
    PASS
}

async fn insert_duplicate_key_conflicts(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("a", 1)).await);
    let mut other = Specimen::new("a", 2);
    other.label = "changed".into();
    let r = ctx.specimens.insert(&other).await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::DuplicateKey,
                ..
            })
        ),
        "{r:?}"
    );
    let stored = ok!(ctx.specimens.get(&"a".to_owned()).await);
    check!(
        stored.map(|s| s.rank) == Some(1),
        "the first insert must stay"
    );
    PASS
}

async fn unique_field_conflicts_on_insert(ctx: Ctx) -> CaseResult {
    let u = match ctx.uniques() {
        Ok(u) => u,
        Err(outcome) => return outcome,
    };
    ok!(u.insert(&UniqueSpecimen::new("a", 1, Some("C-1"))).await);
    let r = u.insert(&UniqueSpecimen::new("b", 2, Some("C-1"))).await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::Unique {
                    field: Some("code")
                },
                ..
            })
        ),
        "{r:?}"
    );
    check!(!ok!(u.exists(&"b".to_owned()).await));
    // A taken key wins over a taken unique value.
    let r = u.insert(&UniqueSpecimen::new("a", 3, Some("C-1"))).await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::DuplicateKey,
                ..
            })
        ),
        "{r:?}"
    );
    PASS
}

async fn unique_field_conflicts_on_update(ctx: Ctx) -> CaseResult {
    let u = match ctx.uniques() {
        Ok(u) => u,
        Err(outcome) => return outcome,
    };
    ok!(u.insert(&UniqueSpecimen::new("a", 1, Some("C-1"))).await);
    ok!(u.insert(&UniqueSpecimen::new("b", 2, None)).await);
    let r = u
        .update(&"b".to_owned(), &Patch::new().set("code", "C-1"))
        .await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::Unique { .. },
                ..
            })
        ),
        "{r:?}"
    );
    let b = ok!(u.get(&"b".to_owned()).await);
    check!(b.is_some_and(|b| b.code.is_none() && b.version == 1));
    let r = u.upsert(&UniqueSpecimen::new("c", 3, Some("C-1"))).await;
    check!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
    check!(!ok!(u.exists(&"c".to_owned()).await));
    PASS
}

async fn unique_value_freed_by_update(ctx: Ctx) -> CaseResult {
    let u = match ctx.uniques() {
        Ok(u) => u,
        Err(outcome) => return outcome,
    };
    ok!(u.insert(&UniqueSpecimen::new("a", 1, Some("C-1"))).await);
    ok!(u
        .update(&"a".to_owned(), &Patch::new().set("code", "C-2"))
        .await);
    ok!(u.insert(&UniqueSpecimen::new("b", 2, Some("C-1"))).await);
    ok!(u.update(&"a".to_owned(), &Patch::new().unset("code")).await);
    ok!(u.insert(&UniqueSpecimen::new("c", 3, Some("C-2"))).await);
    PASS
}

async fn unique_allows_many_nulls(ctx: Ctx) -> CaseResult {
    let u = match ctx.uniques() {
        Ok(u) => u,
        Err(outcome) => return outcome,
    };
    for k in ["a", "b", "c"] {
        ok!(u.insert(&UniqueSpecimen::new(k, 0, None)).await);
    }
    ok!(u.insert(&UniqueSpecimen::new("coded", 9, Some("X"))).await);
    ok!(u
        .update(&"coded".to_owned(), &Patch::new().unset("code"))
        .await);
    ok!(u.insert(&UniqueSpecimen::new("late", 10, None)).await);
    check!(ok!(u.count(&Filter::all()).await) == 5);
    PASS
}

async fn delete_reports_existence(ctx: Ctx) -> CaseResult {
    seed(&ctx, 2).await?;
    check!(ok!(ctx.specimens.delete(&id(0)).await));
    check!(!ok!(ctx.specimens.delete(&id(0)).await));
    check!(ok!(ctx.specimens.get(&id(0)).await).is_none());
    check!(count_specimens(&ctx).await? == 1);
    PASS
}

async fn exists_reports_existence(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(ok!(ctx.specimens.exists(&id(0)).await));
    check!(!ok!(ctx.specimens.exists(&id(1)).await));
    PASS
}

async fn integer_keys_round_trip(ctx: Ctx) -> CaseResult {
    for k in [i64::MIN, -1, 0, 1, i64::MAX] {
        ok!(ctx
            .notes
            .insert(&Note {
                id: k,
                body: format!("n{k}")
            })
            .await);
    }
    for k in [i64::MIN, -1, 0, 1, i64::MAX] {
        let n = ok!(ctx.notes.get(&k).await);
        check!(n.is_some_and(|n| n.id == k && n.body == format!("n{k}")));
    }
    let page = ok!(ctx.notes.list(&Query::new()).await);
    let mut keys: Vec<i64> = page.items.iter().map(|n| n.id).collect();
    if !ctx.ordered() {
        keys.sort_unstable();
    }
    check!(keys == vec![i64::MIN, -1, 0, 1, i64::MAX], "{keys:?}");
    PASS
}

async fn unicode_round_trips(ctx: Ctx) -> CaseResult {
    let texts = [
        "Zoë Ångström",
        "日本語テキスト",
        "emoji 🩺💊🧬",
        "עברית",
        "e\u{301} combining",
        "tab\tnewline\n",
    ];
    for (i, t) in texts.iter().enumerate() {
        let mut s = Specimen::new(&format!("ключ-{i}-🔑"), 0);
        s.label = (*t).to_owned();
        s.owner = Some((*t).to_owned());
        ok!(ctx.specimens.insert(&s).await);
        let got = ok!(ctx.specimens.get(&s.id).await);
        check!(got.as_ref() == Some(&s), "text #{i} changed");
    }
    PASS
}

async fn large_value_round_trips(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("big", 0);
    s.body = Some("x".repeat(512 * 1024));
    s.label = "y".repeat(dl_models::MAX_INDEXED_TEXT_BYTES);
    ok!(ctx.specimens.insert(&s).await);
    let got = ok!(ctx.specimens.get(&"big".to_owned()).await);
    check!(
        got.as_ref() == Some(&s),
        "512 KiB body and a 1 KiB indexed label round-trip"
    );
    PASS
}

async fn oversize_value_is_rejected(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("huge", 0);
    s.body = Some("x".repeat(dl_models::DEFAULT_MAX_VALUE_BYTES + 1));
    let r = ctx.specimens.insert(&s).await;
    check!(
        matches!(&r, Err(Error::Invalid { field: Some(f), .. }) if f == "body"),
        "{r:?}"
    );
    check!(is_invalid(&ctx.specimens.upsert(&s).await));
    // An indexed text field holds at most MAX_INDEXED_TEXT_BYTES.
    let mut s = Specimen::new("long-label", 0);
    s.label = "y".repeat(dl_models::MAX_INDEXED_TEXT_BYTES + 1);
    let r = ctx.specimens.insert(&s).await;
    check!(
        matches!(&r, Err(Error::Invalid { field: Some(f), .. }) if f == "label"),
        "{r:?}"
    );
    let r = ctx
        .specimens
        .count(&Filter::eq(
            "label",
            "y".repeat(dl_models::MAX_INDEXED_TEXT_BYTES + 1),
        ))
        .await;
    check!(is_invalid(&r), "{r:?}");
    check!(count_specimens(&ctx).await? == 0, "nothing written");
    PASS
}

async fn max_len_is_enforced(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("a", 0);
    s.code = Some("c".repeat(65));
    check!(is_invalid(&ctx.specimens.insert(&s).await));
    let r = ctx
        .notes
        .insert(&Note {
            id: 1,
            body: "b".repeat(257),
        })
        .await;
    check!(is_invalid(&r));
    ok!(ctx
        .notes
        .insert(&Note {
            id: 1,
            body: "b".repeat(256)
        })
        .await);
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

async fn nul_character_is_rejected(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("a", 0);
    s.label = "bad\0label".into();
    check!(is_invalid(&ctx.specimens.insert(&s).await));
    let mut s = Specimen::new("b", 0);
    s.tags = vec!["nul\0".into()];
    check!(is_invalid(&ctx.specimens.insert(&s).await));
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

const INJECTIONS: [&str; 6] = [
    "'; DROP TABLE specimens; --",
    "\" OR 1=1 --",
    "x' OR '1'='1",
    "{\"$gt\": \"\"}",
    "*\r\nFLUSHALL\r\n",
    "'); DELETE FROM notes; SELECT ('",
];

async fn injection_value_is_data(ctx: Ctx) -> CaseResult {
    for (i, inj) in INJECTIONS.iter().enumerate() {
        let mut s = Specimen::new(&id(i), 0);
        s.label = (*inj).to_owned();
        ok!(ctx.specimens.insert(&s).await);
        let back = ok!(ctx.specimens.get(&id(i)).await);
        check!(
            back.is_some_and(|b| b.label == *inj),
            "injection #{i} changed"
        );
    }
    check!(count_specimens(&ctx).await? == INJECTIONS.len() as u64);
    for (i, inj) in INJECTIONS.iter().enumerate() {
        let n = gated!(
            ctx,
            Need::IndexedFilter,
            Op::Count,
            ctx.specimens.count(&Filter::eq("label", *inj)).await
        );
        check!(n == 1, "injection #{i} matched {n}");
    }
    PASS
}

async fn injection_key_is_data(ctx: Ctx) -> CaseResult {
    for (i, inj) in INJECTIONS.iter().enumerate() {
        ok!(ctx
            .specimens
            .insert(&Specimen::new(inj, i64::try_from(i).unwrap_or_default()))
            .await);
    }
    for inj in INJECTIONS {
        check!(ok!(ctx.specimens.get(&inj.to_owned()).await).is_some_and(|s| s.id == inj));
    }
    check!(ok!(ctx.specimens.delete(&INJECTIONS[0].to_owned()).await));
    check!(count_specimens(&ctx).await? == INJECTIONS.len() as u64 - 1);
    PASS
}

async fn injection_field_name_in_filter_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 2).await?;
    for inj in INJECTIONS {
        let r = ctx.specimens.count(&Filter::eq(inj, "x")).await;
        check!(
            matches!(&r, Err(Error::Invalid { field: Some(_), .. })),
            "{r:?}"
        );
        let r = ctx
            .specimens
            .list(&Query::new().filter(Filter::is_null(inj)))
            .await;
        check!(is_invalid(&r));
    }
    check!(count_specimens(&ctx).await? == 2);
    PASS
}

async fn injection_field_name_in_sort_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 2).await?;
    for inj in INJECTIONS {
        check!(is_invalid(
            &ctx.specimens.list(&Query::new().sort_asc(inj)).await
        ));
    }
    check!(count_specimens(&ctx).await? == 2);
    PASS
}

async fn injection_field_name_in_patch_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    for inj in INJECTIONS {
        check!(is_invalid(
            &ctx.specimens
                .update(&id(0), &Patch::new().set(inj, 1))
                .await
        ));
    }
    let s = ok!(ctx.specimens.get(&id(0)).await);
    check!(s.is_some_and(|s| s.version == 1), "nothing written");
    PASS
}

fn full_specimen(key: &str) -> Specimen {
    Specimen {
        id: key.to_owned(),
        label: "full".into(),
        code: Some("FULL-1".into()),
        rank: -42,
        score: Some(3.25),
        active: true,
        born: NaiveDate::from_ymd_opt(1970, 1, 1),
        seen_at: Some(ts(2026, 3, 4, 5)),
        ref_id: Some(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)),
        tags: vec!["a".into(), "b c".into()],
        body: Some("long free text".into()),
        owner: Some("Test Owner".into()),
        version: 7,
    }
}

async fn all_types_round_trip(ctx: Ctx) -> CaseResult {
    let s = full_specimen("full");
    ok!(ctx.specimens.insert(&s).await);
    check!(ok!(ctx.specimens.get(&"full".to_owned()).await).as_ref() == Some(&s));
    let page = ok!(ctx.specimens.list(&Query::new()).await);
    check!(page.items == vec![s.clone()]);
    check!(ok!(ctx.specimens.get_many(&["full".to_owned()]).await) == vec![s]);
    PASS
}

async fn nulls_round_trip(ctx: Ctx) -> CaseResult {
    let s = Specimen::new("nulls", 0);
    ok!(ctx.specimens.insert(&s).await);
    check!(ok!(ctx.specimens.get(&"nulls".to_owned()).await).as_ref() == Some(&s));
    PASS
}

async fn timestamps_keep_milliseconds(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("t", 0);
    let precise = DateTime::parse_from_rfc3339("2026-05-06T07:08:09.123456789Z")
        .map_err(|e| e.to_string())?
        .with_timezone(&Utc);
    s.seen_at = Some(precise);
    ok!(ctx.specimens.insert(&s).await);
    let got = ok!(ctx.specimens.get(&"t".to_owned()).await).ok_or("missing")?;
    let want =
        DateTime::parse_from_rfc3339("2026-05-06T07:08:09.123Z").map_err(|e| e.to_string())?;
    check!(got.seen_at == Some(want.with_timezone(&Utc)));
    PASS
}

async fn json_round_trips(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("j", 0);
    s.tags = vec![
        "quote\"s".into(),
        "back\\slash".into(),
        "ünï".into(),
        String::new(),
    ];
    ok!(ctx.specimens.insert(&s).await);
    check!(ok!(ctx.specimens.get(&"j".to_owned()).await).is_some_and(|g| g.tags == s.tags));
    PASS
}

async fn nan_is_rejected(ctx: Ctx) -> CaseResult {
    let mut s = Specimen::new("nan", 0);
    s.score = Some(f64::NAN);
    // serde writes NaN as null; score is nullable, so it would silently turn
    // into null. The codec sees null only; a NaN in a filter is rejected.
    let r = ctx.specimens.count(&Filter::gt("score", f64::NAN)).await;
    check!(is_invalid(&r), "{r:?}");
    let r = ctx
        .specimens
        .count(&Filter::gt("score", f64::INFINITY))
        .await;
    check!(is_invalid(&r), "{r:?}");
    PASS
}

async fn long_key_is_rejected(ctx: Ctx) -> CaseResult {
    let k = "k".repeat(dl_repositories::query::MAX_KEY_BYTES + 1);
    check!(is_invalid(
        &ctx.specimens.insert(&Specimen::new(&k, 0)).await
    ));
    check!(is_invalid(&ctx.specimens.get(&k).await));
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

// ---------------------------------------------------------------- updates

async fn update_sets_fields(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let got = ok!(ctx
        .specimens
        .update(
            &id(0),
            &Patch::new()
                .set("label", "new")
                .set("score", 1.5)
                .set("born", NaiveDate::from_ymd_opt(2000, 2, 29))
        )
        .await)
    .ok_or("update returned None")?;
    check!(
        got.label == "new"
            && got.score == Some(1.5)
            && got.born == NaiveDate::from_ymd_opt(2000, 2, 29)
    );
    check!(ok!(ctx.specimens.get(&id(0)).await).as_ref() == Some(&got));
    PASS
}

async fn update_absent_is_none(ctx: Ctx) -> CaseResult {
    check!(
        ok!(ctx
            .specimens
            .update(&"nope".to_owned(), &Patch::new().set("rank", 1))
            .await)
        .is_none()
    );
    check!(count_specimens(&ctx).await? == 0, "update must not create");
    PASS
}

async fn update_unsets_nullable(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&full_specimen("f")).await);
    let got = ok!(ctx
        .specimens
        .update(&"f".to_owned(), &Patch::new().unset("score").unset("owner"))
        .await)
    .ok_or("None")?;
    check!(got.score.is_none() && got.owner.is_none() && got.code.is_some());
    let stored = ok!(ctx.specimens.get(&"f".to_owned()).await).ok_or("missing")?;
    check!(
        stored == got,
        "the stored entity differs from the one update returned"
    );
    PASS
}

async fn update_null_on_required_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(is_invalid(
        &ctx.specimens
            .update(&id(0), &Patch::new().unset("label"))
            .await
    ));
    PASS
}

async fn update_unknown_field_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let r = ctx
        .specimens
        .update(&id(0), &Patch::new().set("labl", "x"))
        .await;
    check!(
        matches!(&r, Err(Error::Invalid { field: Some(f), .. }) if f == "labl"),
        "{r:?}"
    );
    PASS
}

async fn update_wrong_type_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    for p in [
        Patch::new().set("rank", "ten"),
        Patch::new().set("label", 10),
        Patch::new().set("born", "not-a-date"),
        Patch::new().set("ref_id", "not-a-uuid"),
        Patch::new().set("active", 1),
        Patch::new().set("rank", 1).set("score", "x"),
    ] {
        check!(is_invalid(&ctx.specimens.update(&id(0), &p).await), "{p:?}");
    }
    let s = ok!(ctx.specimens.get(&id(0)).await).ok_or("missing")?;
    check!(s.rank == 0 && s.version == 1, "nothing written");
    PASS
}

async fn update_key_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(is_invalid(
        &ctx.specimens
            .update(&id(0), &Patch::new().set("id", "other"))
            .await
    ));
    PASS
}

async fn update_version_field_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(is_invalid(
        &ctx.specimens
            .update(&id(0), &Patch::new().set("version", 9))
            .await
    ));
    PASS
}

async fn update_bumps_version(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let a = ok!(ctx
        .specimens
        .update(&id(0), &Patch::new().set("rank", 5))
        .await)
    .ok_or("None")?;
    let b = ok!(ctx
        .specimens
        .update(&id(0), &Patch::new().set("rank", 6))
        .await)
    .ok_or("None")?;
    check!(
        a.version == 2 && b.version == 3,
        "{} {}",
        a.version,
        b.version
    );
    PASS
}

async fn update_expected_version_matches(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let got = ok!(ctx
        .specimens
        .update(&id(0), &Patch::new().set("rank", 5).expect_version(1))
        .await)
    .ok_or("None")?;
    check!(got.version == 2 && got.rank == 5);
    PASS
}

async fn update_expected_version_conflicts(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    ok!(ctx
        .specimens
        .update(&id(0), &Patch::new().set("rank", 5))
        .await);
    let r = ctx
        .specimens
        .update(&id(0), &Patch::new().set("rank", 9).expect_version(1))
        .await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::VersionMismatch {
                    expected: 1,
                    actual: 2
                },
                ..
            })
        ),
        "{r:?}"
    );
    let s = ok!(ctx.specimens.get(&id(0)).await).ok_or("missing")?;
    check!(s.rank == 5 && s.version == 2);
    check!(
        ok!(ctx
            .specimens
            .update(
                &"nope".to_owned(),
                &Patch::new().set("rank", 1).expect_version(1)
            )
            .await)
        .is_none()
    );
    PASS
}

async fn update_expect_version_without_version_field_is_rejected(ctx: Ctx) -> CaseResult {
    ok!(ctx
        .notes
        .insert(&Note {
            id: 1,
            body: "b".into()
        })
        .await);
    check!(is_invalid(
        &ctx.notes
            .update(&1, &Patch::new().set("body", "c").expect_version(1))
            .await
    ));
    let n = ok!(ctx.notes.update(&1, &Patch::new().set("body", "c")).await).ok_or("None")?;
    check!(n.body == "c");
    PASS
}

async fn empty_patch_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(is_invalid(
        &ctx.specimens.update(&id(0), &Patch::new()).await
    ));
    PASS
}

async fn patch_same_field_twice_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    check!(is_invalid(
        &ctx.specimens
            .update(&id(0), &Patch::new().set("rank", 1).set("rank", 2))
            .await
    ));
    PASS
}

async fn update_is_partial(ctx: Ctx) -> CaseResult {
    let full = full_specimen("f");
    ok!(ctx.specimens.insert(&full).await);
    let got = ok!(ctx
        .specimens
        .update(&"f".to_owned(), &Patch::new().set("rank", 1))
        .await)
    .ok_or("None")?;
    let mut want = full;
    want.rank = 1;
    want.version += 1;
    check!(got == want, "fields other than rank changed");
    PASS
}

async fn replace_bumps_version(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let mut s = ok!(ctx.specimens.get(&id(0)).await).ok_or("missing")?;
    s.label = "replaced".into();
    let stored = ok!(ctx.specimens.replace(&s).await);
    check!(stored.version == 2 && stored.label == "replaced");
    check!(ok!(ctx.specimens.get(&id(0)).await) == Some(stored));
    PASS
}

async fn replace_stale_version_conflicts(ctx: Ctx) -> CaseResult {
    seed(&ctx, 1).await?;
    let stale = ok!(ctx.specimens.get(&id(0)).await).ok_or("missing")?;
    let mut fresh = stale.clone();
    fresh.label = "first".into();
    ok!(ctx.specimens.replace(&fresh).await);
    let mut late = stale;
    late.label = "second".into();
    let r = ctx.specimens.replace(&late).await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::VersionMismatch {
                    expected: 1,
                    actual: 2
                },
                ..
            })
        ),
        "{r:?}"
    );
    check!(ok!(ctx.specimens.get(&id(0)).await).is_some_and(|s| s.label == "first"));
    PASS
}

async fn replace_absent_is_not_found(ctx: Ctx) -> CaseResult {
    let r = ctx.specimens.replace(&Specimen::new("nope", 1)).await;
    check!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

async fn replace_without_version_field(ctx: Ctx) -> CaseResult {
    ok!(ctx
        .notes
        .insert(&Note {
            id: 5,
            body: "a".into()
        })
        .await);
    let n = ok!(ctx
        .notes
        .replace(&Note {
            id: 5,
            body: "b".into()
        })
        .await);
    check!(n.body == "b");
    let r = ctx
        .notes
        .replace(&Note {
            id: 6,
            body: "b".into(),
        })
        .await;
    check!(matches!(r, Err(Error::NotFound { .. })));
    PASS
}

async fn upsert_inserts_then_overwrites(ctx: Ctx) -> CaseResult {
    let s = Specimen::new("u", 1);
    let first = ok!(ctx.specimens.upsert(&s).await);
    check!(first == s, "inserted as given");
    let mut changed = s.clone();
    changed.label = "again".into();
    changed.version = 99;
    let second = ok!(ctx.specimens.upsert(&changed).await);
    check!(
        second.label == "again" && second.version == 2,
        "version {}",
        second.version
    );
    check!(count_specimens(&ctx).await? == 1);
    PASS
}

// ---------------------------------------------------------------- filters

async fn filter_eq(ctx: Ctx) -> CaseResult {
    seed(&ctx, 6).await?;
    let got = gated!(
        ctx,
        Need::IndexedFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::eq("rank", 3))).await?
    );
    check!(got == vec![id(3)]);
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::eq("active", true))).await?);
    check!(got == vec![id(0), id(2), id(4)], "{got:?}");
    PASS
}

async fn filter_eq_on_key(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::eq("id", id(1)))).await?);
    check!(got == vec![id(1)]);
    PASS
}

async fn set_owner(ctx: &Ctx, i: usize, owner: Option<&str>) -> Result<(), String> {
    let p = match owner {
        Some(o) => Patch::new().set("owner", o),
        None => Patch::new().unset("owner"),
    };
    ctx.specimens
        .update(&id(i), &p)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn filter_ne_excludes_nulls(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    set_owner(&ctx, 0, Some("ann")).await?;
    set_owner(&ctx, 1, Some("bob")).await?;
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::ne("owner", "ann"))).await?
    );
    check!(got == vec![id(1)], "{got:?}");
    PASS
}

async fn filter_ordering_operators(ctx: Ctx) -> CaseResult {
    seed(&ctx, 6).await?;
    let q = |f| Query::new().filter(f);
    let lt = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, q(Filter::lt("rank", 2))).await?
    );
    check!(lt == vec![id(0), id(1)]);
    let lte = ok!(list_ids(&ctx, q(Filter::lte("rank", 2))).await?);
    check!(lte == vec![id(0), id(1), id(2)]);
    let gt = ok!(list_ids(&ctx, q(Filter::gt("rank", 3))).await?);
    check!(gt == vec![id(4), id(5)]);
    let gte = ok!(list_ids(&ctx, q(Filter::gte("rank", 3))).await?);
    check!(gte == vec![id(3), id(4), id(5)]);
    let text = ok!(list_ids(&ctx, q(Filter::gt("label", "label-3"))).await?);
    check!(text == vec![id(4), id(5)]);
    PASS
}

async fn filter_dates_and_timestamps(ctx: Ctx) -> CaseResult {
    for (i, (y, h)) in [(1950, 1), (1980, 2), (2000, 3), (2020, 4)]
        .iter()
        .enumerate()
    {
        let mut s = Specimen::new(&id(i), 0);
        s.born = NaiveDate::from_ymd_opt(*y, 6, 15);
        s.seen_at = Some(ts(2026, 1, 1, *h));
        ok!(ctx.specimens.insert(&s).await);
    }
    ok!(ctx.specimens.insert(&Specimen::new(&id(9), 0)).await);
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(
            &ctx,
            Query::new().filter(
                Filter::gte("born", NaiveDate::from_ymd_opt(1980, 1, 1))
                    .and(Filter::lt("born", NaiveDate::from_ymd_opt(2001, 1, 1)))
            )
        )
        .await?
    );
    check!(got == vec![id(1), id(2)], "{got:?}");
    let got = ok!(list_ids(
        &ctx,
        Query::new().filter(Filter::gt("seen_at", ts(2026, 1, 1, 2)))
    )
    .await?);
    check!(got == vec![id(2), id(3)], "{got:?}");
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::gte("born", "1999-01-01"))).await?);
    check!(
        got == vec![id(2), id(3)],
        "ISO text coerces to a date: {got:?}"
    );
    PASS
}

async fn filter_float_accepts_int(ctx: Ctx) -> CaseResult {
    for (i, x) in [0.5, 1.0, 2.5].iter().enumerate() {
        let mut s = Specimen::new(&id(i), 0);
        s.score = Some(*x);
        ok!(ctx.specimens.insert(&s).await);
    }
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::gte("score", 1))).await?
    );
    check!(got == vec![id(1), id(2)]);
    PASS
}

async fn filter_in(ctx: Ctx) -> CaseResult {
    seed(&ctx, 6).await?;
    let got = ok!(list_ids(
        &ctx,
        Query::new().filter(Filter::is_in("id", [id(5), id(0)]))
    )
    .await?);
    check!(got == vec![id(0), id(5)]);
    let got = gated!(
        ctx,
        Need::IndexedFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::is_in("rank", [1, 4, 99]))).await?
    );
    check!(got == vec![id(1), id(4)]);
    PASS
}

async fn filter_in_empty_matches_nothing(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    let none: Vec<String> = Vec::new();
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::is_in("id", none.clone()))).await?);
    check!(got.is_empty());
    check!(ok!(ctx.specimens.count(&Filter::is_in("id", none)).await) == 0);
    let got = gated!(
        ctx,
        Need::IndexedFilter,
        Op::List,
        list_ids(
            &ctx,
            Query::new().filter(Filter::is_in("rank", Vec::<i64>::new()))
        )
        .await?
    );
    check!(got.is_empty());
    check!(
        ok!(ctx
            .specimens
            .count(&Filter::is_in("rank", Vec::<i64>::new()))
            .await)
            == 0
    );
    PASS
}

async fn filter_in_large_list(ctx: Ctx) -> CaseResult {
    seed(&ctx, 10).await?;
    let keys: Vec<String> = (5..10_005).map(id).collect();
    check!(
        ok!(ctx
            .specimens
            .count(&Filter::is_in("id", keys.clone()))
            .await)
            == 5
    );
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::is_in("id", keys))).await?);
    check!(got == (5..10).map(id).collect::<Vec<_>>());
    let values: Vec<i64> = (5..10_005).collect();
    let n = gated!(
        ctx,
        Need::IndexedFilter,
        Op::Count,
        ctx.specimens
            .count(&Filter::is_in("rank", values.clone()))
            .await
    );
    check!(n == 5);
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::is_in("rank", values))).await?);
    check!(got == (5..10).map(id).collect::<Vec<_>>());
    PASS
}

async fn filter_in_too_large_is_rejected(ctx: Ctx) -> CaseResult {
    let values: Vec<i64> =
        (0..=i64::try_from(dl_repositories::query::MAX_IN_LIST).unwrap_or_default()).collect();
    check!(is_invalid(
        &ctx.specimens.count(&Filter::is_in("rank", values)).await
    ));
    PASS
}

async fn filter_in_null_is_rejected(ctx: Ctx) -> CaseResult {
    let r = ctx
        .specimens
        .count(&Filter::In("owner".into(), vec![dl_models::Value::Null]))
        .await;
    check!(is_invalid(&r));
    PASS
}

async fn filter_is_null(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    set_owner(&ctx, 1, Some("x")).await?;
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::is_null("owner"))).await?
    );
    check!(got == vec![id(0), id(2)]);
    PASS
}

async fn filter_not_is_null(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    set_owner(&ctx, 1, Some("x")).await?;
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(
            &ctx,
            Query::new().filter(Filter::not(Filter::is_null("owner")))
        )
        .await?
    );
    check!(got == vec![id(1)]);
    PASS
}

async fn filter_not_eq_includes_nulls(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    set_owner(&ctx, 0, Some("ann")).await?;
    set_owner(&ctx, 1, Some("bob")).await?;
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(
            &ctx,
            Query::new().filter(Filter::not(Filter::eq("owner", "ann")))
        )
        .await?
    );
    check!(
        got == vec![id(1), id(2)],
        "not(eq) is plain negation: {got:?}"
    );
    PASS
}

/// Inserts s00, s01, ... with the given labels.
async fn seed_labels(ctx: &Ctx, labels: &[&str]) -> Result<(), String> {
    for (i, l) in labels.iter().enumerate() {
        let mut s = Specimen::new(&id(i), 0);
        s.label = (*l).to_owned();
        ctx.specimens
            .insert(&s)
            .await
            .map_err(|e| format!("seed: {e}"))?;
    }
    Ok(())
}

async fn filter_prefix(ctx: Ctx) -> CaseResult {
    seed_labels(
        &ctx,
        &["Smith", "Smithers", "smith", "Smyth", "Ωmega", "Ωm"],
    )
    .await?;
    let got = gated!(
        ctx,
        Need::Prefix,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::prefix("label", "Smith"))).await?
    );
    check!(got == vec![id(0), id(1)], "case-sensitive: {got:?}");
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::prefix("label", "Ωm"))).await?);
    check!(got == vec![id(4), id(5)]);
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::prefix("label", ""))).await?);
    check!(got.len() == 6);
    check!(is_invalid(
        &ctx.specimens.count(&Filter::prefix("rank", "1")).await
    ));
    PASS
}

async fn filter_prefix_is_literal(ctx: Ctx) -> CaseResult {
    seed_labels(&ctx, &["100%", "100x", "a_b", "axb", "[ab]", "a.b"]).await?;
    let got = gated!(
        ctx,
        Need::Prefix,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::prefix("label", "100%"))).await?
    );
    check!(got == vec![id(0)], "{got:?}");
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::prefix("label", "a_"))).await?);
    check!(got == vec![id(2)], "{got:?}");
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::prefix("label", "a."))).await?);
    check!(got == vec![id(5)], "{got:?}");
    let got = ok!(list_ids(&ctx, Query::new().filter(Filter::prefix("label", "[a"))).await?);
    check!(got == vec![id(4)], "{got:?}");
    PASS
}

async fn filter_and_or_nested(ctx: Ctx) -> CaseResult {
    seed(&ctx, 10).await?;
    // On the key: (id in [1,2,3] and id in [2,3]) or id = 8
    let f = Filter::is_in("id", [id(1), id(2), id(3)])
        .and(Filter::is_in("id", [id(2), id(9)]))
        .or(Filter::eq("id", id(8)));
    let got = ok!(list_ids(&ctx, Query::new().filter(f)).await?);
    check!(got == vec![id(2), id(8)], "{got:?}");
    // (rank in [1,2,3] and active) or (rank = 8)
    let f = Filter::is_in("rank", [1, 2, 3])
        .and(Filter::eq("active", true))
        .or(Filter::eq("rank", 8));
    let got = gated!(
        ctx,
        Need::IndexedFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(f)).await?
    );
    check!(got == vec![id(2), id(8)], "{got:?}");
    let f = Filter::Or(vec![
        Filter::eq("rank", 1),
        Filter::Or(vec![Filter::eq("rank", 2), Filter::eq("rank", 3)]),
    ]);
    check!(ok!(ctx.specimens.count(&f).await) == 3);
    let f = Filter::not(Filter::eq("active", true)).and(Filter::lt("rank", 5));
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(f)).await?
    );
    check!(got == vec![id(1), id(3)], "{got:?}");
    PASS
}

async fn filter_empty_and_or(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    check!(ok!(ctx.specimens.count(&Filter::And(vec![])).await) == 3);
    check!(ok!(ctx.specimens.count(&Filter::Or(vec![])).await) == 0);
    PASS
}

async fn filter_eq_null_is_rejected(ctx: Ctx) -> CaseResult {
    let r = ctx
        .specimens
        .count(&Filter::eq("owner", dl_models::Value::Null))
        .await;
    check!(
        matches!(&r, Err(Error::Invalid { reason, .. }) if reason.contains("is_null")),
        "{r:?}"
    );
    PASS
}

async fn filter_wrong_type_is_rejected(ctx: Ctx) -> CaseResult {
    for f in [
        Filter::eq("rank", "three"),
        Filter::eq("label", 3),
        Filter::gt("born", "1980/01/01"),
        Filter::eq("ref_id", "zzz"),
        Filter::eq("active", "yes"),
        Filter::is_in("rank", ["1"]),
        Filter::eq("id", 5),
    ] {
        let r = ctx.specimens.count(&f).await;
        check!(is_invalid(&r), "{f:?}: {r:?}");
    }
    PASS
}

async fn filter_order_on_bool_is_rejected(ctx: Ctx) -> CaseResult {
    check!(is_invalid(
        &ctx.specimens.count(&Filter::lt("active", true)).await
    ));
    PASS
}

async fn filter_on_json_is_rejected(ctx: Ctx) -> CaseResult {
    check!(is_invalid(
        &ctx.specimens
            .count(&Filter::eq("tags", serde_json::json!(["a"])))
            .await
    ));
    PASS
}

async fn filter_too_deep_is_rejected(ctx: Ctx) -> CaseResult {
    let mut f = Filter::eq("rank", 1);
    for _ in 0..40 {
        f = Filter::Or(vec![f]);
    }
    check!(is_invalid(&ctx.specimens.count(&f).await));
    let wide = Filter::Or((0..2_000).map(|i| Filter::eq("rank", i)).collect());
    check!(is_invalid(&ctx.specimens.count(&wide).await));
    PASS
}

async fn filter_uuid(ctx: Ctx) -> CaseResult {
    let u = Uuid::from_u128(42);
    let mut s = Specimen::new("u", 0);
    s.ref_id = Some(u);
    ok!(ctx.specimens.insert(&s).await);
    ok!(ctx.specimens.insert(&Specimen::new("v", 0)).await);
    let got = gated!(
        ctx,
        Need::AnyFilter,
        Op::List,
        list_ids(&ctx, Query::new().filter(Filter::eq("ref_id", u))).await?
    );
    check!(got == vec!["u".to_owned()]);
    let got = ok!(list_ids(
        &ctx,
        Query::new().filter(Filter::eq("ref_id", u.to_string()))
    )
    .await?);
    check!(
        got == vec!["u".to_owned()],
        "hyphenated text coerces to a uuid"
    );
    PASS
}

async fn count_with_filter(ctx: Ctx) -> CaseResult {
    seed(&ctx, 7).await?;
    let n = gated!(
        ctx,
        Need::IndexedFilter,
        Op::Count,
        ctx.specimens.count(&Filter::eq("active", true)).await
    );
    check!(n == 4);
    let n = gated!(
        ctx,
        Need::AnyFilter,
        Op::Count,
        ctx.specimens.count(&Filter::gte("rank", 5)).await
    );
    check!(n == 2);
    PASS
}

async fn count_all(ctx: Ctx) -> CaseResult {
    check!(count_specimens(&ctx).await? == 0);
    seed(&ctx, 4).await?;
    check!(count_specimens(&ctx).await? == 4);
    PASS
}

// ---------------------------------------------------------------- listing

async fn list_defaults_to_key_order(ctx: Ctx) -> CaseResult {
    for k in ["b", "a", "c", "B", "ä"] {
        ok!(ctx.specimens.insert(&Specimen::new(k, 0)).await);
    }
    let got = ok!(list_ids(&ctx, Query::new()).await?);
    check!(got == vec!["B", "a", "b", "c", "ä"], "byte order: {got:?}");
    if !ctx.ordered() {
        // A store listing in its own order must at least keep it stable.
        let a = ids(&ok!(ctx.specimens.list(&Query::new()).await).items);
        let b = ids(&ok!(ctx.specimens.list(&Query::new()).await).items);
        check!(a == b, "the store's own order changed between two listings");
    }
    PASS
}

async fn seed_owners(ctx: &Ctx) -> Result<(), String> {
    // s00 null, s01 "b", s02 null, s03 "a", s04 "b"
    seed(ctx, 5).await?;
    set_owner(ctx, 1, Some("b")).await?;
    set_owner(ctx, 3, Some("a")).await?;
    set_owner(ctx, 4, Some("b")).await?;
    Ok(())
}

async fn sort_puts_nulls_first_ascending(ctx: Ctx) -> CaseResult {
    seed_owners(&ctx).await?;
    let got = gated!(
        ctx,
        Need::Sort,
        Op::List,
        list_ids(&ctx, Query::new().sort_asc("owner")).await?
    );
    check!(got == vec![id(0), id(2), id(3), id(1), id(4)], "{got:?}");
    PASS
}

async fn sort_puts_nulls_last_descending(ctx: Ctx) -> CaseResult {
    seed_owners(&ctx).await?;
    let got = gated!(
        ctx,
        Need::Sort,
        Op::List,
        list_ids(&ctx, Query::new().sort_desc("owner")).await?
    );
    check!(got == vec![id(1), id(4), id(3), id(0), id(2)], "{got:?}");
    PASS
}

async fn sort_ties_break_by_key(ctx: Ctx) -> CaseResult {
    for (k, rank) in [("d", 1), ("a", 2), ("c", 1), ("b", 2)] {
        ok!(ctx.specimens.insert(&Specimen::new(k, rank)).await);
    }
    let got = gated!(
        ctx,
        Need::Sort,
        Op::List,
        list_ids(&ctx, Query::new().sort_desc("rank")).await?
    );
    check!(got == vec!["a", "b", "c", "d"], "{got:?}");
    let got = ok!(list_ids(&ctx, Query::new().sort_asc("rank").sort_desc("id")).await?);
    check!(got == vec!["d", "c", "b", "a"], "{got:?}");
    PASS
}

async fn walk(
    ctx: &Ctx,
    q: Query,
    between: impl Fn(usize) -> Option<Specimen>,
) -> Result<Result<Vec<String>, Error>, String> {
    let mut seen = Vec::new();
    let mut q = q;
    for page_no in 0..1000 {
        let page = match ctx.specimens.list(&q).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        seen.extend(ids(&page.items));
        match page.next {
            None => {
                let distinct: std::collections::HashSet<&String> = seen.iter().collect();
                if distinct.len() != seen.len() {
                    return Err(format!("pages repeated an entity: {seen:?}"));
                }
                if !ctx.ordered() && q.sort.is_empty() {
                    seen.sort();
                }
                return Ok(Ok(seen));
            }
            Some(c) => q = q.after(c),
        }
        if let Some(s) = between(page_no) {
            ctx.specimens.insert(&s).await.map_err(|e| e.to_string())?;
        }
    }
    Err("more than 1000 pages".into())
}

async fn pages_have_no_duplicates_or_gaps(ctx: Ctx) -> CaseResult {
    seed(&ctx, 20).await?;
    let got = ok!(walk(&ctx, Query::new().limit(3), |_| None).await?);
    check!(got == (0..20).map(id).collect::<Vec<_>>(), "{got:?}");
    let got = gated!(
        ctx,
        Need::Sort,
        Op::List,
        walk(
            &ctx,
            Query::new().sort_desc("active").sort_asc("rank").limit(4),
            |_| None
        )
        .await?
    );
    let mut want: Vec<String> = (0..20).step_by(2).map(id).collect();
    want.extend((1..20).step_by(2).map(id));
    check!(got == want, "{got:?}");
    PASS
}

async fn pages_survive_inserts_between_pages(ctx: Ctx) -> CaseResult {
    // ranks 10, 20, ... 100; between pages insert one rank that sorts before
    // the cursor and one after.
    for i in 1..=10 {
        ok!(ctx
            .specimens
            .insert(&Specimen::new(&format!("r{i:03}"), i * 10))
            .await);
    }
    let got = gated!(
        ctx,
        Need::Sort,
        Op::List,
        walk(&ctx, Query::new().sort_asc("rank").limit(3), |page| {
            let before = i64::try_from(page).unwrap_or_default() * 10 + 1; // sorts early
            Some(Specimen::new(&format!("x{page:03}"), before))
        })
        .await?
    );
    let mut seen = std::collections::HashSet::new();
    for k in &got {
        check!(seen.insert(k.clone()), "duplicate {k}");
    }
    for i in 1..=10 {
        check!(
            seen.contains(&format!("r{i:03}")),
            "gap: r{i:03} missing from {got:?}"
        );
    }
    let ranks_in_order = {
        let mut v = Vec::new();
        for k in &got {
            v.push(ok!(ctx.specimens.get(k).await).map_or(-1, |s| s.rank));
        }
        v
    };
    check!(
        ranks_in_order.windows(2).all(|w| w[0] <= w[1]),
        "order broken: {ranks_in_order:?}"
    );
    PASS
}

async fn pages_descending_with_nulls(ctx: Ctx) -> CaseResult {
    seed_owners(&ctx).await?;
    for limit in 1..=4 {
        let got = gated!(
            ctx,
            Need::Sort,
            Op::List,
            walk(&ctx, Query::new().sort_desc("owner").limit(limit), |_| None).await?
        );
        check!(
            got == vec![id(1), id(4), id(3), id(0), id(2)],
            "limit {limit}: {got:?}"
        );
        let got = ok!(walk(&ctx, Query::new().sort_asc("owner").limit(limit), |_| None).await?);
        check!(
            got == vec![id(0), id(2), id(3), id(1), id(4)],
            "limit {limit}: {got:?}"
        );
    }
    PASS
}

async fn cursor_never_carries_phi(ctx: Ctx) -> CaseResult {
    let secret = "Jane Q Testperson";
    for i in 0..4 {
        let mut s = Specimen::new(&id(i), 0);
        s.owner = Some(format!("{secret} {i}"));
        ok!(ctx.specimens.insert(&s).await);
    }
    let page = gated!(
        ctx,
        Need::Sort,
        Op::List,
        ctx.specimens
            .list(&Query::new().sort_asc("owner").limit(2))
            .await
    );
    let cursor = page.next.ok_or("expected a next page")?;
    // Every base64url stretch of the cursor, decoded: no PHI, and no key
    // (cursors are sealed: opaque).
    for part in cursor.as_str().split('.') {
        let decoded = base64_decode(part).ok_or("cursor is not base64url")?;
        check!(!decoded.contains("Testperson"), "PHI in cursor: {decoded}");
        check!(!decoded.contains(&id(1)), "a key in the cursor: {decoded}");
    }
    check!(!cursor.as_str().contains("Testperson"));
    // Altered anywhere, it is refused (authenticated).
    let text = cursor.as_str();
    for i in [0, text.len() / 2, text.len() - 1] {
        let mut altered: Vec<char> = text.chars().collect();
        altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
        let altered: String = altered.into_iter().collect();
        let r = ctx
            .specimens
            .list(
                &Query::new()
                    .sort_asc("owner")
                    .limit(2)
                    .after(dl_repositories::Cursor(altered)),
            )
            .await;
        check!(is_invalid(&r), "a cursor altered at {i}: {r:?}");
    }
    let next = ok!(ctx
        .specimens
        .list(&Query::new().sort_asc("owner").limit(2).after(cursor))
        .await);
    check!(ids(&next.items) == vec![id(2), id(3)]);
    PASS
}

fn base64_decode(s: &str) -> Option<String> {
    // A tiny decoder so the suite does not depend on how the cursor is built.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = u32::try_from(alphabet.iter().position(|a| *a == c)?).ok()?;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push(u8::try_from((bits >> n) & 0xff).ok()?);
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

async fn cursor_garbage_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 3).await?;
    for junk in [
        "",
        "!!!",
        "eyJ4IjoxfQ",
        &"A".repeat(20_000),
        "'; DROP TABLE specimens; --",
    ] {
        let r = ctx
            .specimens
            .list(&Query::new().after(dl_repositories::Cursor(junk.to_owned())))
            .await;
        check!(is_invalid(&r), "{junk:.20}: {r:?}");
    }
    check!(count_specimens(&ctx).await? == 3);
    PASS
}

async fn cursor_of_another_query_is_rejected(ctx: Ctx) -> CaseResult {
    seed(&ctx, 5).await?;
    let page = ok!(ctx.specimens.list(&Query::new().limit(2)).await);
    let cursor = page.next.ok_or("expected a next page")?;
    let r = ctx.notes.list(&Query::new().after(cursor.clone())).await;
    check!(is_invalid(&r), "a cursor of another entity: {r:?}");
    let r = ctx
        .specimens
        .list(&Query::new().sort_desc("rank").after(cursor))
        .await;
    if ctx.lacks(Need::Sort) {
        return ctx.expect_unsupported(r, Op::List);
    }
    check!(is_invalid(&r), "{r:?}");
    PASS
}

async fn limit_out_of_range_is_rejected(ctx: Ctx) -> CaseResult {
    check!(is_invalid(
        &ctx.specimens.list(&Query::new().limit(0)).await
    ));
    check!(is_invalid(
        &ctx.specimens
            .list(&Query::new().limit(dl_repositories::query::MAX_LIMIT + 1))
            .await
    ));
    PASS
}

async fn list_with_filter_and_limit(ctx: Ctx) -> CaseResult {
    seed(&ctx, 12).await?;
    let f = || Filter::eq("active", false);
    let page = gated!(
        ctx,
        Need::IndexedFilter,
        Op::List,
        ctx.specimens.list(&Query::new().filter(f()).limit(4)).await
    );
    check!(ids(&page.items) == vec![id(1), id(3), id(5), id(7)]);
    let next = ok!(ctx
        .specimens
        .list(
            &Query::new()
                .filter(f())
                .limit(4)
                .after(page.next.ok_or("no next")?)
        )
        .await);
    check!(ids(&next.items) == vec![id(9), id(11)] && next.next.is_none());
    PASS
}

async fn sort_on_json_is_rejected(ctx: Ctx) -> CaseResult {
    check!(is_invalid(
        &ctx.specimens.list(&Query::new().sort_asc("tags")).await
    ));
    check!(is_invalid(
        &ctx.specimens
            .list(&Query::new().sort_asc("rank").sort_desc("rank"))
            .await
    ));
    PASS
}

// ---------------------------------------------------------------- batches

async fn insert_many_then_get_many(ctx: Ctx) -> CaseResult {
    let batch: Vec<Specimen> = (0..50)
        .map(|i| Specimen::new(&id(i), i64::try_from(i).unwrap_or_default()))
        .collect();
    ok!(ctx.specimens.insert_many(&batch).await);
    let keys: Vec<String> = (0..50).map(id).collect();
    check!(ok!(ctx.specimens.get_many(&keys).await) == batch);
    PASS
}

async fn get_many_keeps_order_dedups_skips_missing(ctx: Ctx) -> CaseResult {
    seed(&ctx, 5).await?;
    let keys = vec![id(3), "missing".to_owned(), id(1), id(3), id(4)];
    let got = ok!(ctx.specimens.get_many(&keys).await);
    check!(ids(&got) == vec![id(3), id(1), id(4)], "{:?}", ids(&got));
    PASS
}

async fn insert_many_repeated_key_conflicts(ctx: Ctx) -> CaseResult {
    let batch = vec![
        Specimen::new("a", 1),
        Specimen::new("b", 2),
        Specimen::new("a", 3),
    ];
    let r = ctx.specimens.insert_many(&batch).await;
    check!(
        matches!(
            r,
            Err(Error::Conflict {
                kind: ConflictKind::DuplicateKey,
                ..
            })
        ),
        "{r:?}"
    );
    check!(count_specimens(&ctx).await? == 0, "nothing written");
    PASS
}

async fn insert_many_existing_key(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("b", 0)).await);
    ok!(ctx.specimens.insert(&Specimen::new("d", 0)).await);
    let batch = vec![
        Specimen::new("a", 1),
        Specimen::new("b", 2),
        Specimen::new("c", 3),
        Specimen::new("d", 4),
    ];
    let r = ctx.specimens.insert_many(&batch).await;
    check!(
        ok!(ctx.specimens.get(&"b".to_owned()).await).is_some_and(|b| b.rank == 0),
        "existing row kept"
    );
    let n = count_specimens(&ctx).await?;
    if ctx.lacks(Need::AtomicBatch) {
        // Every entity that does not conflict is written; each failure is
        // reported by its position in the batch.
        let want = vec![
            BatchFailure {
                index: 1,
                kind: ConflictKind::DuplicateKey,
            },
            BatchFailure {
                index: 3,
                kind: ConflictKind::DuplicateKey,
            },
        ];
        check!(
            matches!(&r, Err(Error::Batch { failures, .. }) if *failures == want),
            "{r:?}"
        );
        check!(n == 4, "non-atomic batch writes the others: {n}");
    } else {
        check!(
            matches!(
                r,
                Err(Error::Conflict {
                    kind: ConflictKind::DuplicateKey,
                    ..
                })
            ),
            "{r:?}"
        );
        check!(n == 2, "atomic batch writes nothing: {n}");
    }
    PASS
}

async fn insert_many_invalid_entity_writes_nothing(ctx: Ctx) -> CaseResult {
    let mut bad = Specimen::new("bad", 0);
    bad.label = "x".repeat(dl_models::DEFAULT_MAX_VALUE_BYTES + 1);
    let batch = vec![Specimen::new("a", 1), bad, Specimen::new("c", 3)];
    check!(is_invalid(&ctx.specimens.insert_many(&batch).await));
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

async fn insert_many_empty_is_noop(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert_many(&[]).await);
    check!(count_specimens(&ctx).await? == 0);
    PASS
}

async fn get_many_empty(ctx: Ctx) -> CaseResult {
    check!(ok!(ctx.specimens.get_many(&[]).await).is_empty());
    PASS
}

async fn insert_many_large_batch(ctx: Ctx) -> CaseResult {
    let batch: Vec<Note> = (0..3_000)
        .map(|i| Note {
            id: i,
            body: format!("note {i}"),
        })
        .collect();
    ok!(ctx.notes.insert_many(&batch).await);
    check!(ok!(ctx.notes.count(&Filter::all()).await) == 3_000);
    let keys: Vec<i64> = (0..3_000).rev().collect();
    let got = ok!(ctx.notes.get_many(&keys).await);
    check!(got.len() == 3_000 && got[0].id == 2_999 && got[2_999].id == 0);
    PASS
}

// ---------------------------------------------------------------- transactions

/// Begins a transaction and opens the specimen repository in it; on a
/// store without transactions, the precise `Unsupported` ends the case.
macro_rules! begin {
    ($ctx:expr) => {{
        let tx = gated!(
            $ctx,
            Need::Transactions,
            Op::Transaction,
            $ctx.backend.begin().await
        );
        let repo = ok!(dl_repositories::Repo::<Specimen>::open(tx.backend()).await);
        (tx, repo)
    }};
}

async fn present(ctx: &Ctx, key: &str) -> Result<bool, String> {
    ctx.specimens
        .exists(&key.to_owned())
        .await
        .map_err(|e| format!("exists: {e}"))
}

async fn transaction_commit_makes_writes_visible(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("t-old", 1)).await);
    let (tx, repo) = begin!(ctx);
    ok!(repo.insert(&Specimen::new("t-a", 1)).await);
    ok!(repo
        .insert_many(&[Specimen::new("t-b", 2), Specimen::new("t-c", 3)])
        .await);
    ok!(repo
        .update(&"t-a".to_owned(), &Patch::new().set("rank", 10))
        .await);
    check!(ok!(repo.delete(&"t-old".to_owned()).await));
    // Reads inside see the transaction's own writes.
    check!(ok!(repo.get(&"t-a".to_owned()).await).is_some_and(|s| s.rank == 10));
    check!(ok!(repo.count(&Filter::all()).await) == 3);
    ok!(tx.commit().await);
    for k in ["t-a", "t-b", "t-c"] {
        check!(present(&ctx, k).await?, "{k} committed");
    }
    check!(!present(&ctx, "t-old").await?, "the delete committed");
    check!(
        ok!(ctx.specimens.get(&"t-a".to_owned()).await)
            .is_some_and(|s| s.rank == 10 && s.version == 2)
    );
    PASS
}

async fn transaction_rollback_discards_writes(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("t-kept", 1)).await);
    let (tx, repo) = begin!(ctx);
    ok!(repo.insert(&Specimen::new("t-a", 1)).await);
    ok!(repo
        .update(&"t-kept".to_owned(), &Patch::new().set("rank", 99))
        .await);
    ok!(repo.delete(&"t-kept".to_owned()).await);
    ok!(tx.rollback().await);
    check!(!present(&ctx, "t-a").await?);
    check!(
        ok!(ctx.specimens.get(&"t-kept".to_owned()).await)
            .is_some_and(|s| s.rank == 1 && s.version == 1)
    );
    PASS
}

async fn transaction_drop_rolls_back(ctx: Ctx) -> CaseResult {
    {
        let (tx, repo) = begin!(ctx);
        ok!(repo.insert(&Specimen::new("t-a", 1)).await);
        drop(tx);
        drop(repo);
    }
    check!(!present(&ctx, "t-a").await?);
    // The store takes writes again (the dropped transaction let go).
    ok!(ctx.specimens.insert(&Specimen::new("t-b", 1)).await);
    PASS
}

async fn transaction_panic_rolls_back(ctx: Ctx) -> CaseResult {
    let r = ctx.backend.begin().await;
    if ctx.lacks(Need::Transactions) {
        return ctx.expect_unsupported(r, Op::Transaction);
    }
    let tx = ok!(r);
    let task = tokio::spawn(async move {
        let repo = dl_repositories::Repo::<Specimen>::open(tx.backend())
            .await
            .expect("open in the transaction");
        repo.insert(&Specimen::new("t-a", 1)).await.expect("insert");
        let _held = tx;
        panic!("a handler fails halfway (expected by the test)");
    });
    check!(task.await.is_err_and(|e| e.is_panic()), "the task panicked");
    check!(!present(&ctx, "t-a").await?);
    ok!(ctx.specimens.insert(&Specimen::new("t-b", 1)).await);
    PASS
}

async fn transaction_uncommitted_writes_are_invisible(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("t-x", 1)).await);
    let (tx, repo) = begin!(ctx);
    ok!(repo.insert(&Specimen::new("t-a", 1)).await);
    ok!(repo
        .update(&"t-x".to_owned(), &Patch::new().set("rank", 5))
        .await);
    // Another connection sees neither, until the commit.
    check!(
        !present(&ctx, "t-a").await?,
        "an uncommitted insert is invisible"
    );
    check!(ok!(ctx.specimens.get(&"t-x".to_owned()).await).is_some_and(|s| s.rank == 1));
    ok!(tx.commit().await);
    check!(present(&ctx, "t-a").await?);
    check!(ok!(ctx.specimens.get(&"t-x".to_owned()).await).is_some_and(|s| s.rank == 5));
    PASS
}

async fn transaction_version_conflict_rolls_back_everything(ctx: Ctx) -> CaseResult {
    ok!(ctx.specimens.insert(&Specimen::new("t-x", 1)).await);
    let (tx, repo) = begin!(ctx);
    ok!(repo.insert(&Specimen::new("t-a", 1)).await);
    let stale = repo
        .update(
            &"t-x".to_owned(),
            &Patch::new().set("rank", 2).expect_version(7),
        )
        .await;
    check!(
        matches!(
            stale,
            Err(Error::Conflict {
                kind: ConflictKind::VersionMismatch {
                    expected: 7,
                    actual: 1
                },
                ..
            })
        ),
        "{stale:?}"
    );
    // What a caller does with the error (DataLayer::transaction does it).
    ok!(tx.rollback().await);
    check!(
        !present(&ctx, "t-a").await?,
        "the insert before the conflict is gone"
    );
    check!(ok!(ctx.specimens.get(&"t-x".to_owned()).await).is_some_and(|s| s.version == 1));
    PASS
}

async fn transaction_nested_is_refused(ctx: Ctx) -> CaseResult {
    let (tx, _repo) = begin!(ctx);
    let nested = tx.backend().begin().await;
    let r = match nested {
        Err(Error::Unsupported {
            store,
            operation: Op::Transaction,
            ref reason,
        }) if store == ctx.store && reason.contains("nested") => PASS,
        other => Err(format!("nested begin: {other:?}")),
    };
    ok!(tx.rollback().await);
    r
}

async fn transaction_calls_after_the_end_are_refused(ctx: Ctx) -> CaseResult {
    let (tx, repo) = begin!(ctx);
    ok!(repo.insert(&Specimen::new("t-a", 1)).await);
    ok!(tx.commit().await);
    let late = repo.insert(&Specimen::new("t-b", 1)).await;
    check!(is_invalid(&late), "{late:?}");
    check!(
        !present(&ctx, "t-b").await?,
        "nothing written after the end"
    );
    check!(present(&ctx, "t-a").await?);
    PASS
}
