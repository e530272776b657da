//! A model as one `ModelDescription` (for migration, backups and `show-model`), and back.
//!
//! `export_model` reads every record of a model in key order, so the same state always gives
//! the same description, and `description_bytes` encodes it deterministically (proto maps are BTreeMaps), so the
//! same description is always the same bytes and `description_digest` the same sha256.
//! `import_model` produces the writes that recreate the records exactly, with the last report
//! applied from each machine's agent (so a report whose acknowledgement was lost is not applied
//! twice); the model log and the charm blobs travel separately.

use prost::Message;
use sha2::{Digest, Sha256};
use starling_proto::model::{AgentSeq, Application, ModelDescription};

use crate::keys;
use crate::model::digest::ModelDigest;
use crate::model::{names, ModelError};
use crate::records;
use crate::state::{StateRead, WriteSet};
use crate::StorageError;

/// The description format this build writes and reads.
pub const DESCRIPTION_FORMAT_VERSION: u32 = 1;

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The description breaks a rule or collides with an existing model.
    #[error(transparent)]
    Rule(#[from] ModelError),
    /// Reading the current state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The whole model `uuid` as a description, or `None` if there is no such model.
pub fn export_model(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<ModelDescription>, StorageError> {
    let Some(model) = records::read_model(state, uuid)? else {
        return Ok(None);
    };
    let applications: Vec<Application> =
        records::read_records(state, &keys::application_prefix(uuid))?;
    let mut charm_digests: Vec<String> = applications
        .iter()
        .map(|a| a.charm_digest.clone())
        .filter(|d| !d.is_empty())
        .collect();
    charm_digests.sort();
    charm_digests.dedup();
    Ok(Some(ModelDescription {
        format_version: DESCRIPTION_FORMAT_VERSION,
        model: Some(model),
        machines: records::read_records(state, &keys::machine_prefix(uuid))?,
        applications,
        units: records::read_records(state, &keys::unit_prefix(uuid))?,
        relations: records::read_records(state, &keys::relation_prefix(uuid))?,
        status_history: records::read_records(state, &keys::history_prefix(uuid))?,
        charm_digests,
        agent_seqs: read_agent_seqs(state, uuid)?,
    }))
}

/// The last applied agent report of every machine of model `uuid`, in machine order.
fn read_agent_seqs(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Vec<AgentSeq>, StorageError> {
    let mut seqs = Vec::new();
    for (key, _) in state.scan_prefix(&keys::agent_seq_prefix(uuid), usize::MAX)? {
        let machine = keys::trailing_u64(&key)
            .ok_or_else(|| StorageError::corrupt("state", &key, "no machine number"))?;
        seqs.push(AgentSeq {
            machine_id: machine.to_string(),
            seq: records::read_agent_seq(state, uuid, machine)?,
        });
    }
    Ok(seqs)
}

/// The model digest (`model::digest`) of model `uuid` as stored: every key under its prefix
/// but its log. Reads the whole model; the migration computes it per change instead.
pub fn model_digest(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<ModelDigest, StorageError> {
    let mut digest = ModelDigest::EMPTY;
    for (key, value) in state.scan_prefix(&keys::model_prefix(uuid), usize::MAX)? {
        if keys::fed_model(&key) == Some(uuid) {
            digest.add_pair(&key, &value);
        }
    }
    Ok(digest)
}

/// The canonical encoding of a description: the same description is always the same bytes.
pub fn description_bytes(description: &ModelDescription) -> Vec<u8> {
    description.encode_to_vec()
}

/// Hex sha256 of `description_bytes`: what the migration source and target compare.
pub fn description_digest(description: &ModelDescription) -> String {
    hex::encode(Sha256::digest(description_bytes(description)))
}

fn corrupt(what: impl Into<String>) -> ModelError {
    ModelError::invalid(format!("model description: {}", what.into()))
}

/// The writes that recreate `description` in `state`: refused if its format is unknown, a
/// record is malformed, or a model with its uuid or owner/name exists already.
pub fn import_model(
    state: &(impl StateRead + ?Sized),
    description: &ModelDescription,
) -> Result<WriteSet, ImportError> {
    if description.format_version != DESCRIPTION_FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {DESCRIPTION_FORMAT_VERSION})",
            description.format_version
        ))
        .into());
    }
    let model = description
        .model
        .as_ref()
        .ok_or_else(|| corrupt("no model record"))?;
    names::check_uuid(&model.uuid)?;
    names::check_model_name(&model.name)?;
    names::check_user_name(&model.owner)?;
    if records::read_model(state, &model.uuid)?.is_some() {
        return Err(ModelError::ModelUuidExists {
            uuid: model.uuid.clone(),
        }
        .into());
    }
    if records::read_model_uuid(state, &model.owner, &model.name)?.is_some() {
        return Err(ModelError::ModelExists {
            owner: model.owner.clone(),
            name: model.name.clone(),
        }
        .into());
    }
    let uuid = model.uuid.as_str();
    let mut writes = WriteSet::new();
    let mut put = |key: Vec<u8>, bytes: Vec<u8>| {
        if writes.insert(key.clone(), Some(bytes)).is_some() {
            return Err(corrupt(format!(
                "two records for {}",
                String::from_utf8_lossy(&key)
            )));
        }
        Ok(())
    };
    put(keys::model_record_key(uuid), model.encode_to_vec())?;
    put(
        keys::model_name_key(&model.owner, &model.name),
        uuid.as_bytes().to_vec(),
    )?;
    for machine in &description.machines {
        let id = names::parse_machine_id(&machine.id)?;
        put(keys::machine_key(uuid, id), machine.encode_to_vec())?;
    }
    for application in &description.applications {
        names::check_application_name(&application.name)?;
        put(
            keys::application_key(uuid, &application.name),
            application.encode_to_vec(),
        )?;
    }
    for unit in &description.units {
        let (application, number) = names::parse_unit_name(&unit.name)?;
        if application != unit.application {
            return Err(corrupt(format!(
                "unit {} names application {}",
                unit.name, unit.application
            ))
            .into());
        }
        put(
            keys::unit_key(uuid, application, number),
            unit.encode_to_vec(),
        )?;
    }
    for relation in &description.relations {
        put(
            keys::relation_key(uuid, relation.id),
            relation.encode_to_vec(),
        )?;
    }
    for history in &description.status_history {
        let entity = history.entity.as_str();
        let base = entity.strip_suffix("/agent").unwrap_or(entity);
        names::parse_entity(base)?;
        put(keys::history_key(uuid, entity), history.encode_to_vec())?;
    }
    for agent in &description.agent_seqs {
        let machine = names::parse_machine_id(&agent.machine_id)?;
        put(
            keys::agent_seq_key(uuid, machine),
            agent.seq.to_be_bytes().to_vec(),
        )?;
    }
    Ok(writes)
}
