//! The operations the SQL backends share, written once.
//!
//! Each SQL backend module defines `bind`, `bind_all`, `decode_row`, and on
//! its type `statements`, `err` and a `pool` field; these macros
//! expand the operations that are the same text for SQLite and PostgreSQL
//! (only the store, the dialect and the table name differ). The batch
//! operations, DDL and value encoding stay in each module.

/// `stored_version` for an SQL backend's inherent impl.
macro_rules! sqlx_stored_version {
    () => {
        async fn stored_version(
            &self,
            schema: &'static EntitySchema,
            op: Operation,
            key: &Value,
        ) -> Result<Option<Option<i64>>> {
            let st = self.statements(schema);
            let Some(sql) = st.stored_version.clone() else {
                let found = self.exists(schema, key).await?;
                return Ok(found.then_some(None));
            };
            let row = bind(sqlx::query(AssertSqlSafe(sql)), schema.key_field().ty, key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(Some(
                    r.try_get::<i64, _>(0)
                        .map_err(|e| self.err(schema, op, e))?,
                ))),
            }
        }
    };
}

/// An SQL backend's operations as inherent methods (its own, `$own`, then
/// the shared ones), and its `Backend` (one `call`, routed to them) and
/// `Probe`.
macro_rules! sqlx_backend {
    ($ty:ty, $store:expr, $dialect:expr, { $($own:tt)* }) => {
        crate::backend::seam!($ty, pooled, |this, schema, request| {});

        impl $ty {
        $($own)*

        pub(crate) fn store(&self) -> Store {
            $store
        }

        /// A round trip on an idle pooled connection when there is one;
        /// else one new connection, made and closed here, so a health
        /// check says why the store cannot be reached ("connection
        /// refused") at once instead of waiting out the pool's acquire
        /// timeout and reporting that no connection became free.
        async fn ping(&self) -> Result<()> {
            use sqlx::Connection as _;
            let map = |e| {
                crate::sqlx_errors::map_sqlx_error($store, &crate::sqlx_errors::PING_SCHEMA, Operation::Ping, e)
            };
            if let Some(mut conn) = self.pool.try_acquire() {
                return sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| ()).map_err(map);
            }
            let options = self.pool.connect_options();
            let fresh = sqlx::ConnectOptions::connect(&*options).await.map_err(map)?;
            fresh.close().await.map_err(map)
        }

        fn pool_stats(&self) -> Option<crate::backend::PoolStats> {
            let size = self.pool.size();
            let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
            Some(crate::backend::PoolStats {
                size,
                idle,
                in_use: size.saturating_sub(idle),
                max: self.pool.options().get_max_connections(),
            })
        }
    async fn insert(&self, schema: &'static EntitySchema, record: &Record) -> Result<()> {
        let st = self.statements(schema);
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.insert_one)));
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        q.execute(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::Insert, e))?;
        Ok(())
    }

    async fn get(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Record>> {
        let st = self.statements(schema);
        let row = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.get))),
            schema.key_field().ty,
            key,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Get, e))?;
        row.map(|r| decode_row(schema, &r))
            .transpose()
            .map_err(|e| self.err(schema, Operation::Get, e))
    }

    async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        let op = Operation::Update;
        let check = schema.version.zip(patch.expected_version);
        let patched: Vec<usize> = patch.sets.iter().map(|(i, _)| *i).collect();
        let sql = self
            .statements(schema)
            .update(schema, &patched, check.is_some());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, v) in &patch.sets {
            q = bind(q, schema.fields[*i].ty, v);
        }
        q = bind(q, schema.key_field().ty, key);
        if let Some((_, expected)) = check {
            q = q.bind(expected);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        if let Some(r) = row {
            return decode_row(schema, &r)
                .map(Some)
                .map_err(|e| self.err(schema, op, e));
        }
        match (check, self.stored_version(schema, op, key).await?) {
            (_, None) => Ok(None),
            (Some((_, expected)), Some(Some(actual))) => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::VersionMismatch { expected, actual },
            }),
            (_, Some(_)) => Err(Error::Backend {
                store: $store,
                operation: op,
                message: "the row exists but the update matched nothing".into(),
                retryable: true,
                source: None,
            }),
        }
    }

    async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        let op = Operation::Replace;
        let st = self.statements(schema);
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.replace)));
        for (i, (f, v)) in schema.fields.iter().zip(&record.0).enumerate() {
            if i != schema.key {
                q = bind(q, f.ty, v);
            }
        }
        let key = record.get(schema.key);
        q = bind(q, schema.key_field().ty, key);
        if schema.version.is_some() {
            q = q.bind(expected_version.unwrap_or_default());
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        if let Some(r) = row {
            return decode_row(schema, &r).map_err(|e| self.err(schema, op, e));
        }
        match self.stored_version(schema, op, key).await? {
            None => Err(Error::NotFound {
                entity: schema.name,
            }),
            Some(actual) => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::VersionMismatch {
                    expected: expected_version.unwrap_or_default(),
                    actual: actual.unwrap_or_default(),
                },
            }),
        }
    }

    async fn upsert(&self, schema: &'static EntitySchema, record: &Record) -> Result<Record> {
        let st = self.statements(schema);
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.upsert)));
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        let row = q
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::Upsert, e))?;
        decode_row(schema, &row).map_err(|e| self.err(schema, Operation::Upsert, e))
    }

    async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let st = self.statements(schema);
        let done = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.delete))),
            schema.key_field().ty,
            key,
        )
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Delete, e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new($dialect, format!("{} WHERE ", st.select));
        w.cond(schema, &request.cond);
        w.order_by(schema, &request.sort);
        w.limit(request.limit);
        let q = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds);
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::List, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::List, e))
    }

    async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new($dialect, format!("{} WHERE ", st.count));
        w.cond(schema, cond);
        let row = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::Count, e))?;
        let n: i64 = row
            .try_get(0)
            .map_err(|e| self.err(schema, Operation::Count, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let st = self.statements(schema);
        let row = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.exists))),
            schema.key_field().ty,
            key,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Exists, e))?;
        Ok(row.is_some())
    }

        }
    };
}

pub(crate) use {sqlx_backend, sqlx_stored_version};
