//! Applying what agents and nodes report: statuses (with their bounded history), model log
//! records, agents' numbered status reports and presence renewals.

use prost::Message;
use std::collections::BTreeSet;

use starling_proto::command as cmd;
use starling_proto::limits::REPORT_ITEMS_MAX;
use starling_proto::model::{LogRecord, NodePresence, Status, StatusHistory};

use super::{
    Outcome, Refusal, Tx, LOG_MESSAGE_BYTES_MAX, LOG_RECORDS_PER_COMMAND_MAX,
    PRESENCE_ENTRIES_PER_COMMAND_MAX, STATUS_MESSAGE_BYTES_MAX,
};
use crate::keys;
use crate::model::agent::{self as agent_rules, Ownership};
use crate::model::deployment::{self, MODEL_LOG_MAX_RECORDS_DEFAULT, STATUS_HISTORY_SIZE_DEFAULT};
use crate::model::names::{self, Entity};
use crate::model::ModelError;
use crate::records;
use crate::state::StateRead;

impl<R: StateRead + ?Sized> Tx<'_, '_, R> {
    pub(super) fn set_status(&mut self, set: &cmd::SetStatus) -> Outcome {
        let mut model = self.model(&set.model_uuid)?;
        let uuid = model.uuid.clone();
        let entity = names::parse_entity(&set.entity)?;
        let mut status = set
            .status
            .clone()
            .ok_or_else(|| ModelError::invalid("the status report carries no status"))?;
        if status.current.is_empty() {
            return Err(ModelError::invalid("the status has no current value").into());
        }
        if status.message.len() > STATUS_MESSAGE_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "the status message is {} bytes, at most {STATUS_MESSAGE_BYTES_MAX} allowed",
                status.message.len()
            ))
            .into());
        }
        if status.since_unix_ms == 0 {
            status.since_unix_ms = self.now_ms;
        }
        let bad_kind = |allowed: &str| {
            ModelError::invalid(format!(
                "status kind {:?} does not apply to {}; use {allowed}",
                set.kind, set.entity
            ))
        };
        let mut history_entity = entity.to_string();
        // Each arm swaps the new status into its record and yields the record's key, bytes
        // and the previous status.
        let (key, bytes, old): (Vec<u8>, Vec<u8>, Option<Status>) = match &entity {
            Entity::Model => {
                if !matches!(set.kind.as_str(), "" | "workload") {
                    return Err(bad_kind("\"\"").into());
                }
                let old = model.status.replace(status.clone());
                (keys::model_record_key(&uuid), model.encode_to_vec(), old)
            }
            Entity::Machine(number) => {
                if !matches!(set.kind.as_str(), "" | "agent") {
                    return Err(bad_kind("\"agent\"").into());
                }
                let (_, mut machine) = self.machine(&uuid, &number.to_string())?;
                let old = machine.agent_status.replace(status.clone());
                (
                    keys::machine_key(&uuid, *number),
                    machine.encode_to_vec(),
                    old,
                )
            }
            Entity::Application(name) => {
                if !matches!(set.kind.as_str(), "" | "workload") {
                    return Err(bad_kind("\"workload\"").into());
                }
                let mut application = self.application(&uuid, name)?;
                let old = application.status.replace(status.clone());
                (
                    keys::application_key(&uuid, name),
                    application.encode_to_vec(),
                    old,
                )
            }
            Entity::Unit {
                application,
                number,
            } => {
                let mut unit = records::read_unit(&self.state, &uuid, application, *number)?
                    .ok_or_else(|| ModelError::UnitNotFound {
                        unit: names::unit_name(application, *number),
                    })?;
                let old = match set.kind.as_str() {
                    "" | "workload" => unit.workload_status.replace(status.clone()),
                    "agent" => {
                        history_entity.push_str("/agent");
                        unit.agent_status.replace(status.clone())
                    }
                    _ => return Err(bad_kind("\"workload\" or \"agent\"").into()),
                };
                (
                    keys::unit_key(&uuid, application, *number),
                    unit.encode_to_vec(),
                    old,
                )
            }
        };
        if !deployment::status_changed(old.as_ref(), &status) {
            return Ok(cmd::Ok::default());
        }
        self.state.put(key, bytes);
        let keep = self.config_number("status-history-size", STATUS_HISTORY_SIZE_DEFAULT as u64)?;
        let history_key = keys::history_key(&uuid, &history_entity);
        let mut history = records::read_record::<StatusHistory>(&self.state, &history_key)?
            .unwrap_or_else(|| StatusHistory {
                entity: history_entity.clone(),
                entries: Vec::new(),
            });
        deployment::push_status_history(
            &mut history,
            status,
            usize::try_from(keep).unwrap_or(usize::MAX),
        );
        self.put(history_key, &history);
        Ok(cmd::Ok::default())
    }

    pub(super) fn append_log(&mut self, append: &cmd::AppendLog) -> Outcome {
        let mut model = self.model(&append.model_uuid)?;
        if append.records.is_empty() {
            return Err(ModelError::invalid("no log records given").into());
        }
        if append.records.len() > LOG_RECORDS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} log records given, at most {LOG_RECORDS_PER_COMMAND_MAX} per command",
                append.records.len()
            ))
            .into());
        }
        if let Some(big) = append
            .records
            .iter()
            .find(|r| r.message.len() > LOG_MESSAGE_BYTES_MAX)
        {
            return Err(ModelError::invalid(format!(
                "a log message is {} bytes, at most {LOG_MESSAGE_BYTES_MAX} allowed",
                big.message.len()
            ))
            .into());
        }
        let mut seq = model.next_log_seq.max(1);
        for record in &append.records {
            // The agent's number served its one purpose (deduplication) before this.
            let stored = LogRecord {
                seq,
                agent_seq: 0,
                time_unix_ms: if record.time_unix_ms == 0 {
                    self.now_ms
                } else {
                    record.time_unix_ms
                },
                ..record.clone()
            };
            self.put(keys::log_key(&model.uuid, seq), &stored);
            seq += 1;
        }
        model.next_log_seq = seq;
        let max = self.config_number("model-log-max-records", MODEL_LOG_MAX_RECORDS_DEFAULT)?;
        let floor = deployment::log_retention_floor(seq, max);
        if let Some(first) = records::first_log_seq(&self.state, &model.uuid)? {
            for old in first..floor {
                self.state.delete(keys::log_key(&model.uuid, old));
            }
        }
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok {
            last_log_seq: seq - 1,
            ..Default::default()
        })
    }

    /// How the agent of machine `machine` relates to `entity` (a status or log entity name).
    pub(super) fn ownership(
        &self,
        uuid: &str,
        machine: u64,
        entity: &str,
    ) -> Result<Ownership, Refusal> {
        let parsed = names::parse_entity(entity)?;
        let unit_machine = match &parsed {
            Entity::Unit {
                application,
                number,
            } => records::read_unit(&self.state, uuid, application, *number)?.map(|u| u.machine),
            _ => None,
        };
        Ok(agent_rules::entity_ownership(
            &parsed,
            machine,
            unit_machine.as_deref(),
        ))
    }

    pub(super) fn agent_report(&mut self, report: &cmd::AgentReport) -> Outcome {
        let model = self.model(&report.model_uuid)?;
        let (machine, _) = self.machine(&model.uuid, &report.machine_id)?;
        if report.reports.len() > REPORT_ITEMS_MAX {
            return Err(ModelError::invalid(format!(
                "{} status reports given, at most {REPORT_ITEMS_MAX} per command",
                report.reports.len()
            ))
            .into());
        }
        // Every entity is checked before anything is applied, so a foreign one refuses it all.
        let entities = report
            .reports
            .iter()
            .map(|r| r.entity.as_str())
            .chain(report.logs.iter().map(|l| l.entity.as_str()));
        let mut gone = BTreeSet::new();
        for entity in entities {
            match self.ownership(&model.uuid, machine, entity)? {
                Ownership::Own => {}
                Ownership::Gone => {
                    gone.insert(entity.to_owned());
                }
                Ownership::Foreign => {
                    return Err(ModelError::NotAgentEntity {
                        machine: report.machine_id.clone(),
                        entity: entity.to_owned(),
                    }
                    .into())
                }
            }
        }
        let last = records::read_agent_seq(&self.state, &model.uuid, machine)?;
        let seqs: Vec<u64> = report.reports.iter().map(|r| r.seq).collect();
        let mut applied = last;
        for position in agent_rules::reports_to_apply(last, &seqs) {
            let status = &report.reports[position];
            applied = applied.max(status.seq);
            if gone.contains(&status.entity) {
                continue;
            }
            self.set_status(&cmd::SetStatus {
                model_uuid: model.uuid.clone(),
                entity: status.entity.clone(),
                kind: status.kind.clone(),
                status: status.status.clone(),
            })?;
        }
        // Log records carry the agent's sequence numbers too: one applied already (a report
        // whose acknowledgement was lost, sent again, maybe to the model's next controller) is
        // not appended twice. Records without one (older agents) are always appended.
        let logs: Vec<_> = report
            .logs
            .iter()
            .filter(|log| log.agent_seq == 0 || log.agent_seq > last)
            .cloned()
            .collect();
        applied = logs.iter().map(|log| log.agent_seq).fold(applied, u64::max);
        if applied != last {
            self.state.put(
                keys::agent_seq_key(&model.uuid, machine),
                applied.to_be_bytes().to_vec(),
            );
        }
        let mut last_log_seq = 0;
        if !logs.is_empty() {
            last_log_seq = self
                .append_log(&cmd::AppendLog {
                    model_uuid: model.uuid.clone(),
                    records: logs,
                })?
                .last_log_seq;
        }
        Ok(cmd::Ok {
            applied_seq: applied,
            last_log_seq,
            ..Default::default()
        })
    }

    pub(super) fn renew_presence(&mut self, renew: &cmd::RenewPresence) -> Outcome {
        if renew.entries.len() > PRESENCE_ENTRIES_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} presence entries given, at most {PRESENCE_ENTRIES_PER_COMMAND_MAX} per command",
                renew.entries.len()
            ))
            .into());
        }
        let key = keys::presence_key(renew.node_id);
        // A delayed retry must not replace a newer record of the same node.
        if let Some(stored) = records::read_record::<NodePresence>(&self.state, &key)? {
            if stored.renewed_unix_ms > self.now_ms {
                return Ok(cmd::Ok::default());
            }
        }
        let record = NodePresence {
            node_id: renew.node_id,
            entries: renew.entries.clone(),
            renewed_unix_ms: self.now_ms,
        };
        self.put(key, &record);
        Ok(cmd::Ok::default())
    }
}
