//! The bench's records: a seeded generator of realistic legacy rows — customer
//! invoices with lines, stock lines, items and names with the field lists mSupply
//! writes — so every run, and PouchDB's side of it, moves the same data.

use serde_json::{json, Value};

pub struct Gen(pub u64);

impl Gen {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn id(&mut self) -> String {
        format!("{:016X}{:016X}", self.next_u64(), self.next_u64())
    }
    pub fn date(&mut self) -> String {
        format!("2026-{:02}-{:02}", 1 + self.below(12), 1 + self.below(28))
    }
}

/// The rest of a legacy row: real mSupply tables carry dozens of fields, mostly
/// defaults on any one row (the names follow the legacy schema).
fn legacy(mut row: Value, g: &mut Gen, fields: &[(&str, Value)]) -> Value {
    let obj = row.as_object_mut().expect("object");
    for (k, v) in fields {
        obj.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    obj.insert(
        "lastModifiedAt".into(),
        json!(1_700_000_000 + g.below(50_000_000)),
    );
    row
}

fn transact_fields() -> Vec<(&'static str, Value)> {
    let e = || json!("");
    vec![
        ("confirm_time", json!(0)),
        ("subtotal", json!(0.0)),
        ("tax", json!(0.0)),
        ("mode", json!("store")),
        ("category_ID", e()),
        ("currency_ID", json!("NZD")),
        ("currency_rate", json!(1.0)),
        ("prescriber_ID", e()),
        ("goods_received_ID", e()),
        ("ship_date", json!("0000-00-00")),
        ("arrival_date_estimated", json!("0000-00-00")),
        ("arrival_date_actual", json!("0000-00-00")),
        ("waybill_number", e()),
        ("number_of_cartons", json!(0)),
        ("responsible_officer_ID", e()),
        ("service_price", json!(0.0)),
        ("service_descrip", e()),
        ("pickslip_printed_date", json!("0000-00-00")),
        ("invoice_printed_date", json!("0000-00-00")),
        ("finalised_date", json!("0000-00-00")),
        ("finalised_time", json!(0)),
        ("paymentTypeID", e()),
        ("insuranceDiscountAmount", json!(0.0)),
        ("insuranceDiscountRate", json!(0.0)),
        ("nameInsuranceJoinID", e()),
        ("donor_default_id", e()),
        ("user1", e()),
        ("user2", e()),
        ("user3", e()),
        ("user4", e()),
        ("budget_period_ID", e()),
        ("original_PO_ID", e()),
        ("is_cancellation", json!(false)),
        ("is_authorised", json!(false)),
        ("authorisationStatus", e()),
        ("encounter_id", e()),
        ("foreign_currency_total", json!(0.0)),
        ("export_batch", json!(0)),
        ("linked_goods_received_ID", e()),
        ("contact_id", e()),
        ("optionID", e()),
        ("internalData", json!({})),
    ]
}

fn line_fields() -> Vec<(&'static str, Value)> {
    let e = || json!("");
    vec![
        ("note", e()),
        ("prescribedQuantity", json!(0)),
        ("repeat_ID", e()),
        ("order_lines_ID", e()),
        ("local_charge_distributed", json!(0.0)),
        ("price_extension", json!(0.0)),
        ("foreign_cost_price", json!(0.0)),
        ("manufacturer_ID", e()),
        ("donor_id", e()),
        ("sent_pack_size", json!(1)),
        ("spare", json!(0)),
        ("isVVMPassed", e()),
        ("vaccine_vial_monitor_status_ID", e()),
        ("medicine_administrator_ID", e()),
        ("box_number", e()),
        ("is_from_inventory_adjustment", json!(false)),
        ("user_1", e()),
        ("user_2", e()),
        ("user_5_ID", e()),
        ("user_6_ID", e()),
        ("linked_trans_line_ID", e()),
        ("source_backorder_id", e()),
        ("sentQuantity", json!(0)),
        ("optionID", e()),
        ("cost_price_adjusted", json!(0.0)),
    ]
}

fn item_line_fields() -> Vec<(&'static str, Value)> {
    let e = || json!("");
    vec![
        ("available", json!(0)),
        ("total_cost", json!(0.0)),
        ("initial_quan", json!(0)),
        ("initial_cost", json!(0.0)),
        ("extra_recharge", json!(0.0)),
        ("barcodeID", e()),
        ("manufacturer_ID", e()),
        ("donor_id", e()),
        ("vaccine_vial_monitor_status_ID", e()),
        ("weight_per_pack", json!(0.0)),
        ("volume_per_pack", json!(0.0)),
        ("user_1", e()),
        ("user_2", e()),
        ("user_3", e()),
        ("user_4", e()),
        ("user_5_ID", e()),
        ("user_6_ID", e()),
        ("kit_data", json!(null)),
        ("entry_date", json!("2026-01-01")),
        ("stock_on_hold", json!(false)),
    ]
}

fn item_fields() -> Vec<(&'static str, Value)> {
    let e = || json!("");
    vec![
        ("universalcodes_code", e()),
        ("universalcodes_name", e()),
        ("doses", json!(0)),
        ("is_vaccine", json!(false)),
        ("restricted_location_type_ID", e()),
        ("volume_per_pack", json!(0.0)),
        ("weight", json!(0.0)),
        ("buy_price", json!(0.0)),
        ("sell_price", json!(0.0)),
        ("flags", e()),
        ("account_stock_ID", e()),
        ("account_purchases_ID", e()),
        ("account_income_ID", e()),
        ("outer_pack_size", json!(1)),
        ("catalogue_code", e()),
        ("department_ID", e()),
        ("description", e()),
        ("indic_price", json!(0.0)),
        ("ddd_value", e()),
        ("ddd_factor", json!(0.0)),
        ("default_order_quantity", json!(0)),
        ("custom_data", json!(null)),
        ("user_field_1", e()),
        ("user_field_2", e()),
        ("user_field_3", e()),
        ("user_field_4", e()),
        ("user_field_5", json!(0.0)),
        ("user_field_6", e()),
        ("user_field_7", json!(false)),
        ("abc_category", e()),
        ("atc_category", e()),
        ("program_ID", e()),
        ("nonStockType", e()),
        ("default_price", json!(0.0)),
    ]
}

fn name_fields() -> Vec<(&'static str, Value)> {
    let e = || json!("");
    vec![
        ("address2", e()),
        ("address3", e()),
        ("address4", e()),
        ("postal_address1", e()),
        ("postal_address2", e()),
        ("fax", e()),
        ("contact", e()),
        ("comment", e()),
        ("category1_ID", e()),
        ("category2_ID", e()),
        ("category3_ID", e()),
        ("category4_ID", e()),
        ("category5_ID", e()),
        ("category6_ID", e()),
        ("currency_ID", e()),
        ("price_category", json!("A")),
        ("freightfac", json!(0.0)),
        ("hold", json!(false)),
        ("bill_address1", e()),
        ("bill_address2", e()),
        ("url", e()),
        ("barcode", e()),
        ("date_of_birth", json!("0000-00-00")),
        ("gender", e()),
        ("first", e()),
        ("last", e()),
        ("national_health_number", e()),
        ("manufacturer", json!(false)),
        ("donor", json!(false)),
        ("isDeceased", json!(false)),
        ("custom_data", json!(null)),
        ("nationality_ID", e()),
        ("occupation_ID", e()),
        ("ethnicity_ID", e()),
        ("supplying_store_id", e()),
        ("om_created_datetime", e()),
    ]
}

const ITEMS: &[&str] = &[
    "Paracetamol 500mg tablets",
    "Amoxicillin 250mg capsules",
    "Oral rehydration salts sachet",
    "Artemether/Lumefantrine 20/120mg",
    "Zinc sulfate 20mg dispersible",
    "Gauze swab 10x10cm sterile",
];

/// `n` records a clinic writes: stock lines, and customer invoices with 1–5 lines.
pub fn site_records(g: &mut Gen, store: &str, n: usize) -> Vec<(&'static str, Value)> {
    let mut out = Vec::with_capacity(n);
    let mut invoice_num = 1;
    while out.len() < n {
        if g.below(10) < 4 {
            let row = json!({"ID": g.id(), "store_ID": store, "item_ID": format!("ITEM{:04}", g.below(2000)),
                       "batch": format!("B{}", g.below(99999)), "expiry_date": g.date(), "pack_size": 1 + g.below(100),
                       "quantity": g.below(5000), "cost_price": (g.below(10000) as f64) / 100.0,
                       "sell_price": (g.below(15000) as f64) / 100.0, "location_ID": "", "hold": false,
                       "supplier_ID": format!("SUP{:03}", g.below(50)), "note": ""});
            out.push(("item_line", legacy(row, g, &item_line_fields())));
        } else {
            let tid = g.id();
            let row = json!({"ID": tid, "store_ID": store, "name_ID": format!("NAME{:05}", g.below(5000)), "type": "ci",
                       "status": "cn", "invoice_num": invoice_num, "hold": false, "linked_transaction_id": "",
                       "entry_date": g.date(), "entry_time": g.below(86400), "confirm_date": "0000-00-00",
                       "their_ref": format!("REQ-{}", g.below(100000)), "comment": "", "total": 0.0,
                       "user_ID": "U0001", "requisition_ID": ""});
            out.push(("transact", legacy(row, g, &transact_fields())));
            invoice_num += 1;
            for line in 0..(1 + g.below(5)) {
                if out.len() >= n {
                    break;
                }
                let row = json!({"ID": g.id(), "transaction_ID": tid, "item_ID": format!("ITEM{:04}", g.below(2000)),
                           "item_name": ITEMS[g.below(ITEMS.len() as u64) as usize], "line_number": line + 1,
                           "quantity": 1 + g.below(500), "pack_size": 1, "sell_price": (g.below(2000) as f64) / 100.0,
                           "cost_price": (g.below(2000) as f64) / 100.0, "batch": format!("B{}", g.below(99999)),
                           "expiry_date": g.date(), "type": "stock_out", "item_line_ID": "", "location_ID": ""});
                out.push(("trans_line", legacy(row, g, &line_fields())));
            }
        }
    }
    out
}

pub fn central_row(g: &mut Gen, i: usize) -> (&'static str, Value) {
    if i.is_multiple_of(2) {
        (
            "item",
            json!({"ID": format!("ITEM{i:06}"), "code": format!("I{i:06}"), "item_name": ITEMS[i % ITEMS.len()],
                   "unit_ID": "U_TAB", "category_ID": format!("CAT{}", g.below(30)), "default_pack_size": 1 + g.below(100),
                   "type_of": "general", "is_visible": true, "strength": "500mg", "dosage_form": "tablet"})
                .pipe(|r| legacy(r, g, &item_fields())),
        )
    } else {
        (
            "name",
            json!({"ID": format!("NAME{i:06}"), "code": format!("N{i:06}"), "name": format!("Health post {i}"),
                   "type": "facility", "customer": true, "supplier": false, "address1": "Main road",
                   "phone": format!("+64 9 {:07}", g.below(10_000_000)), "email": "", "country": "NZ"})
                .pipe(|r| legacy(r, g, &name_fields())),
        )
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for Value {}
