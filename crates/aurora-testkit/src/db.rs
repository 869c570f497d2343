//! A PostgreSQL database of the test's own on the shared server, dropped at the end.

use crate::DATABASE_URL;

/// A database created for one test and dropped (`WITH (FORCE)`) when this is dropped, also
/// when the test fails.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

async fn admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(DATABASE_URL)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (`make services`)")
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("test_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    /// A pool of 2 connections.
    pub async fn pool(&self) -> sqlx::PgPool {
        self.pool_with(2).await
    }

    pub async fn pool_with(&self, max_connections: u32) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        crate::block_on_own_runtime(async move {
            let mut admin = admin().await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        });
    }
}
