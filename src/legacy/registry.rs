//! The table registry: what each legacy mSupply table is, who owns a row of it,
//! and where it sits in the integration order.
//!
//! Both sides read it: the agent's store turns it into SQL triggers that refuse
//! writes the site does not own ([`super::triggers`]), and the reference central
//! uses it to judge pushes ([`super::owner`]) and route changes. The rows follow the tables of protocol §1 and the rank order
//! of §7.4; a table not listed here is unknown, kept as read-only central data when
//! it arrives and refused for local writes.

/// The data types of protocol §1 ("Data types"), which decide who may edit a row
/// and where it flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Edited on the central only; reaches every site through the change log.
    Central,
    /// Belongs to a store but is edited centrally (`store`, `pref`, …).
    CentralStore,
    /// Edited at the site where the owning store is active.
    Store,
    /// Patients and prescribers: edited where their home store is active.
    Patient,
    /// `name`: a patient when `type` is `"patient"`, central data otherwise.
    Name,
    /// `name_store_join`: central store data, except that it is patient data when it
    /// joins a patient homed here to the active store.
    NameStoreJoin,
    /// Patient data owned through its patient (`nameInsuranceJoin`, `om_document`):
    /// the parent `name` row must be a patient, and its home store is the owner.
    PatientJoin,
    /// Created anywhere, never edited.
    Message,
    /// Rows a site may create and then edit alone (`user` [PC]; `barcode`, which
    /// Open mSupply sites create, §9.6); rows received from elsewhere are read-only.
    Created,
    /// Never leaves the device.
    Local,
}

impl Kind {
    /// The word the store's SQL triggers use for this kind.
    pub fn sql_name(self) -> &'static str {
        match self {
            Kind::Central => "central",
            Kind::CentralStore => "central_store",
            Kind::Store => "store",
            Kind::Patient => "patient",
            Kind::Name => "name",
            Kind::NameStoreJoin => "name_store_join",
            Kind::PatientJoin => "patient_join",
            Kind::Message => "message",
            Kind::Created => "created",
            Kind::Local => "local",
        }
    }
}

/// How the owning store of a row is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    None,
    /// The row names its store in this field.
    Field(&'static str),
    /// The row names a parent row in `field`; the parent's `parent_field` names the store.
    Parent {
        field: &'static str,
        table: &'static str,
        parent_field: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub kind: Kind,
    pub owner: Owner,
    /// Position in the one total integration order of §7.4: parents precede children.
    pub order: u16,
}

/// Rank given to tables the registry does not know: after everything it knows.
pub const UNKNOWN_ORDER: u16 = 10_000;

const fn t(name: &'static str, kind: Kind, owner: Owner) -> Table {
    Table {
        name,
        kind,
        owner,
        order: 0,
    }
}

const STORE_ID: Owner = Owner::Field("store_ID");

/// Every known table, listed in the rank order of protocol §7.4 (line by line, left
/// to right) with the §9.6 tables placed after what they refer to; `order` is
/// filled from this position. Local tables come last.
const TABLES: &[Table] = &[
    // rank 1
    t("currency", Kind::Central, Owner::None),
    t("unit", Kind::Central, Owner::None),
    t("item_category_level1", Kind::Central, Owner::None),
    t("item_category_level2", Kind::Central, Owner::None),
    t("item_category", Kind::Central, Owner::None),
    t("Location_type", Kind::Central, Owner::None),
    t("options", Kind::Central, Owner::None),
    t("periodSchedule", Kind::Central, Owner::None),
    t("name_tag", Kind::Central, Owner::None),
    t("abbreviation", Kind::Central, Owner::None),
    t("item_direction", Kind::Central, Owner::None),
    t("diagnosis", Kind::Central, Owner::None),
    t("insuranceProvider", Kind::Central, Owner::None),
    t("patient_event", Kind::Central, Owner::None),
    t("form_schema", Kind::Central, Owner::None),
    t("warning", Kind::Central, Owner::None),
    t("ship_method", Kind::Central, Owner::None),
    t("vaccine_vial_monitor_status", Kind::Central, Owner::None),
    // rank 2
    t("item", Kind::Central, Owner::None),
    t("period", Kind::Central, Owner::None),
    t("item_warning_link", Kind::Central, Owner::None),
    // rank 3
    t("barcode", Kind::Created, Owner::None),
    t("list_master", Kind::Central, Owner::None),
    t("list_master_line", Kind::Central, Owner::None),
    t("om_document_registry", Kind::Central, Owner::None),
    t("program_indicator", Kind::Central, Owner::None),
    t("indicator_attribute", Kind::Central, Owner::None),
    t("name", Kind::Name, Owner::Field("supplying_store_id")),
    t("contact", Kind::Central, Owner::None),
    // rank 4
    t("store", Kind::CentralStore, Owner::Field("ID")),
    t("Location", Kind::Store, STORE_ID),
    t("sensor", Kind::Store, Owner::Field("storeID")),
    // rank 5
    t("pref", Kind::CentralStore, STORE_ID),
    t("name_store_join", Kind::NameStoreJoin, STORE_ID),
    t("item_store_join", Kind::CentralStore, STORE_ID),
    t("list_master_name_join", Kind::Central, Owner::None),
    t("name_tag_join", Kind::Central, Owner::None),
    t("clinician", Kind::Patient, STORE_ID),
    t("clinician_store_join", Kind::Patient, STORE_ID),
    t("nameInsuranceJoin", Kind::PatientJoin, patient("nameID")),
    t("user", Kind::Created, Owner::None),
    t("om_user_permission", Kind::CentralStore, STORE_ID),
    t("om_document", Kind::PatientJoin, patient("owner_name_ID")),
    // rank 6
    t("item_line", Kind::Store, STORE_ID),
    // rank 7
    t("requisition", Kind::Store, STORE_ID),
    t(
        "requisition_line",
        Kind::Store,
        parent("requisition_ID", "requisition"),
    ),
    t("indicator_value", Kind::Store, STORE_ID),
    t("purchase_order", Kind::Store, STORE_ID),
    t(
        "purchase_order_line",
        Kind::Store,
        parent("purchase_order_ID", "purchase_order"),
    ),
    // rank 8
    t("transact", Kind::Store, STORE_ID),
    t(
        "trans_line",
        Kind::Store,
        parent("transaction_ID", "transact"),
    ),
    // Goods received are edited in legacy mSupply, never by a remote site: read-only here.
    t("Goods_received", Kind::CentralStore, STORE_ID),
    t(
        "Goods_received_line",
        Kind::CentralStore,
        parent("goods_received_ID", "Goods_received"),
    ),
    // rank 9
    t("Stock_take", Kind::Store, STORE_ID),
    t(
        "Stock_take_lines",
        Kind::Store,
        parent("stock_take_ID", "Stock_take"),
    ),
    t("location_movement", Kind::Store, STORE_ID),
    t("temperature_breach", Kind::Store, STORE_ID),
    t("temperature_log", Kind::Store, STORE_ID),
    t("name_note", Kind::Store, STORE_ID),
    t("message", Kind::Message, Owner::Field("fromStoreID")),
    t("om_activity_log", Kind::Store, STORE_ID),
    t("vaccine_vial_monitor_status_log", Kind::Store, STORE_ID),
    // Local data: number counters, logs, permissions, message read state [PC].
    t("number", Kind::Local, Owner::None),
    t("log", Kind::Local, Owner::None),
    t("permission", Kind::Local, Owner::None),
    t("message_read", Kind::Local, Owner::None),
];

/// A line owned through its header's `store_ID`.
const fn parent(field: &'static str, table: &'static str) -> Owner {
    Owner::Parent {
        field,
        table,
        parent_field: "store_ID",
    }
}

/// A row owned through a patient (`name` row) and its home store.
const fn patient(field: &'static str) -> Owner {
    Owner::Parent {
        field,
        table: "name",
        parent_field: "supplying_store_id",
    }
}

/// Central data that reaches only sites with at least one active dispensary
/// store (seed 000, "Other dispensary data"; §9.7).
pub const DISPENSARY_ONLY: &[&str] = &[
    "abbreviation",
    "item_direction",
    "insuranceProvider",
    "patient_event",
];

/// Store data a dispensary store keeps on its site while its "include
/// transactions in sync" preference is off (§9.7): transactions, stock, stocktakes.
pub const DISPENSARY_HELD: &[&str] = &[
    "transact",
    "trans_line",
    "item_line",
    "Stock_take",
    "Stock_take_lines",
];

/// Every known table with its rank filled in.
pub fn tables() -> impl Iterator<Item = Table> {
    TABLES.iter().enumerate().map(|(i, t)| Table {
        order: i as u16 + 1,
        ..*t
    })
}

/// The registry entry for `name` (exact, case-sensitive: `Location` ≠ `location`).
/// The tables whose rows belong to a patient through a field naming its `name`
/// row (`nameInsuranceJoin`, `om_document`), with that field: what comes with a
/// patient made visible on a site (§10.7).
pub fn patient_tables() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLES.iter().filter_map(|t| match t.owner {
        Owner::Parent {
            field,
            table: "name",
            ..
        } => Some((t.name, field)),
        _ => None,
    })
}

pub fn lookup(name: &str) -> Option<Table> {
    tables().find(|t| t.name == name)
}

/// Integration rank of a table; unknown tables go last.
pub fn order(name: &str) -> u16 {
    lookup(name).map_or(UNKNOWN_ORDER, |t| t.order)
}

/// The effective kind of one row: `name` rows are patients only when `type` says so,
/// and unknown tables count as central data (read-only, §1).
pub fn row_kind(table: &str, row: &serde_json::Value) -> Kind {
    match lookup(table) {
        None => Kind::Central,
        Some(t) if t.kind == Kind::Name => {
            if is_patient(row) {
                Kind::Patient
            } else {
                Kind::Central
            }
        }
        Some(t) => t.kind,
    }
}

/// Whether a `name` row is a patient.
pub fn is_patient(row: &serde_json::Value) -> bool {
    row.get("type").and_then(|v| v.as_str()) == Some("patient")
}

/// Whether rows of this kind are ever pushed to the central.
pub fn is_pushable(kind: Kind) -> bool {
    !matches!(kind, Kind::Local)
}

/// A short fingerprint of the registry, so the store rewrites its copy of the table
/// only when this list changes.
pub fn fingerprint() -> u64 {
    tables().fold(super::FNV_START, |h, t| {
        let line = format!(
            "{}|{}|{:?}|{};",
            t.name,
            t.kind.sql_name(),
            t.owner,
            t.order
        );
        super::fnv1a(h, line.as_bytes())
    })
}

/// Fields through which rows refer to a record of a mergeable table; a merge of
/// that table repoints them (§7.4). Joins listed in `MERGE_JOINS` also lose duplicates.
pub fn merge_reference_fields(table: &str) -> &'static [&'static str] {
    match table {
        "item" => &["item_ID", "itemID"],
        "name" => &["name_ID", "nameID", "supplier_ID"],
        "clinician" => &["clinician_ID", "prescriber_ID"],
        _ => &[],
    }
}

/// Join tables that must not end up with two rows for the same pair after a merge:
/// (join table, field pointing at the merged table, the other side of the pair).
pub const MERGE_JOINS: &[(&str, &str, &str)] = &[
    ("item_store_join", "item_ID", "store_ID"),
    ("name_store_join", "name_ID", "store_ID"),
    ("list_master_name_join", "name_ID", "list_master_ID"),
    ("name_tag_join", "name_ID", "name_tag_ID"),
    ("clinician_store_join", "prescriber_ID", "store_ID"),
];

/// Tables whose rows may be merged centrally (§3, "Merge").
pub fn is_mergeable(table: &str) -> bool {
    matches!(table, "item" | "name" | "clinician")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rank_puts_parents_before_children() {
        assert!(order("transact") < order("trans_line"));
        assert!(order("requisition") < order("requisition_line"));
        assert!(order("Stock_take") < order("Stock_take_lines"));
        assert!(order("name") < order("nameInsuranceJoin"));
        assert!(order("currency") < order("item"));
        assert!(order("item") < order("item_line"));
        assert!(order("item_category_level1") < order("item_category_level2"));
        assert!(order("item_category_level2") < order("item_category"));
        assert!(order("purchase_order") < order("purchase_order_line"));
        assert!(order("Goods_received") < order("Goods_received_line"));
        assert!(
            order("transact") < order("Goods_received"),
            "transact.goods_received_ID"
        );
        assert!(order("name") < order("om_document"));
        assert_eq!(order("no_such_table"), UNKNOWN_ORDER);
    }

    #[test]
    fn names_are_patients_only_by_type() {
        assert_eq!(row_kind("name", &json!({"type": "patient"})), Kind::Patient);
        assert_eq!(row_kind("name", &json!({"type": "store"})), Kind::Central);
        assert_eq!(row_kind("mystery", &json!({})), Kind::Central);
        assert_eq!(row_kind("transact", &json!({})), Kind::Store);
    }

    #[test]
    fn table_names_are_case_sensitive_and_unique() {
        assert!(lookup("Location").is_some());
        assert!(lookup("location").is_none());
        let mut names: Vec<_> = tables().map(|t| t.name).collect();
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len);
    }
}
