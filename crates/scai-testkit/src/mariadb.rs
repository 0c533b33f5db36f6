//! A MariaDB database of its own for each test: created with a unique name on the server
//! at [`crate::services::mariadb_url`], dropped when the guard goes out of scope.

use sqlx::mysql::MySqlPoolOptions;
use sqlx::Executor;

pub struct TempDatabase {
    server_url: String,
    name: String,
}

impl TempDatabase {
    /// Create `scai_test_<random>` and return the guard.
    pub async fn create() -> Result<Self, String> {
        let server_url = crate::services::mariadb_url();
        let name = format!("scai_test_{:016x}", rand::random::<u64>());
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&server_url)
            .await
            .map_err(|e| format!("MariaDB at {server_url} unreachable: {e}"))?;
        pool.execute(
            format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin").as_str(),
        )
        .await
        .map_err(|e| format!("create database {name}: {e}"))?;
        pool.close().await;
        Ok(TempDatabase { server_url, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `mysql://…/<name>`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server_url.trim_end_matches('/'), self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime; do the async cleanup on a thread of its own.
        let url = self.server_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(pool) = MySqlPoolOptions::new()
                        .max_connections(1)
                        .connect(&url)
                        .await
                    {
                        let _ = pool
                            .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
                            .await;
                        pool.close().await;
                    }
                });
            }
        })
        .join();
    }
}
