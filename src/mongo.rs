//! MongoDB: the client, and the indexes the provider-document lookups need.

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};
use secrecy::{ExposeSecret, SecretString};

use crate::spec::PipelineSpec;

/// Connects to the database; server selection fails after 5 s instead of the driver's 30 s.
pub async fn connect(
    uri: &SecretString,
    database: &str,
) -> Result<Database, mongodb::error::Error> {
    let mut options = ClientOptions::parse(uri.expose_secret()).await?;
    options.app_name = Some("ml-pipeline".into());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(5));
    Ok(Client::with_options(options)?.database(database))
}

/// Creates the unique (key, provider) index the spec's `$in` lookups use.
pub async fn ensure_indexes(
    db: &Database,
    spec: &PipelineSpec,
) -> Result<(), mongodb::error::Error> {
    let Some(docs) = &spec.documents else {
        return Ok(());
    };
    let index = IndexModel::builder()
        .keys(doc! {docs.key_field.as_str(): 1, docs.provider_field.as_str(): 1})
        .options(
            IndexOptions::builder()
                .unique(true)
                .name("key_provider".to_owned())
                .build(),
        )
        .build();
    db.collection::<mongodb::bson::Document>(&docs.collection)
        .create_index(index)
        .await?;
    Ok(())
}
