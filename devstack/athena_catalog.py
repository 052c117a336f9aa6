"""Seed moto's server with a realistic Athena estate: the TPC-DS schema in Glue, views, workgroups, history.

``seed_athena`` for the tests and the demo, ``seed_large_glue_catalog`` for bench/athena_catalog.py;
``queue_query_results`` answers the next information_schema queries. Both seeds go through the ordinary
AWS APIs (boto3 against ``devstack.moto_server.MotoServer``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import boto3
import httpx

from devstack.moto_server import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY

RESULTS_BUCKET = "analytics-athena-results"
OUTPUT_LOCATION = f"s3://{RESULTS_BUCKET}/collector/"
WAREHOUSE_BUCKET = "analytics-warehouse"
TPCDS_DATABASES = ("tpcds_sf1", "tpcds_sf10")
MARKETING_DATABASE = "marketing"
FEDERATED_CATALOG = "crm_postgres"
FEDERATED_DATABASE = "public"
WORKGROUPS = ("primary", "analysts")
QUERIES_PER_WORKGROUP = {"primary": 56, "analysts": 16}
MOTO_ACCOUNT_ID = "123456789012"  # moto's default account

Columns = list[tuple[str, str]]  # (name, type) pairs, in order


@dataclass(frozen=True)
class SeededTable:
    """A seeded Glue table: ``type`` (``EXTERNAL_TABLE``), its columns and partition keys."""

    type: str
    columns: Columns
    partition_keys: Columns


@dataclass(frozen=True)
class SeededView:
    """A seeded Glue view: the SQL it was created with, its ``dialect`` (``athena`` or ``hive``), columns."""

    sql: str
    dialect: str
    columns: Columns


@dataclass(frozen=True)
class SeededAthena:
    """What ``seed_athena`` created.

    ``output_location``: the ``s3://`` prefix for query results. ``tables``/``views``: ``"db.name"`` →
    its definition (views are not in ``tables``). ``column_count``: columns and partition keys of tables
    and views. ``query_execution_ids``: workgroup → ids in start order (``primary`` starts with the
    ``CREATE DATABASE`` of the federated catalog). ``federated_catalog``/``federated_databases``: the
    LAMBDA catalog and its database.
    """

    region: str
    results_bucket: str
    output_location: str
    databases: list[str]
    tables: dict[str, SeededTable]
    views: dict[str, SeededView]
    column_count: int
    workgroups: list[str]
    query_execution_ids: dict[str, list[str]]
    federated_catalog: str
    federated_databases: list[str]


@dataclass(frozen=True)
class SeededGlueCatalog:
    """What ``seed_large_glue_catalog`` created: ``tables`` as ``(database, table, information_schema
    table_type)``, the number of ``columns`` and ``views``, and the ``query_execution_ids`` started."""

    output_location: str
    workgroups: list[str]
    tables: list[tuple[str, str, str]]
    columns: int
    views: int
    query_execution_ids: list[str]


# TPC-DS: table and column definitions of the TPC Benchmark DS specification (tpc.org, "TPC-DS", v3,
# section 2 "Logical Database Design"), with its types mapped to Hive/Athena types (identifier and integer
# → int, order/ticket numbers → bigint, decimal(p,s), char(n), varchar(n), date). "name:type" tokens,
# whitespace-separated, in the specification's column order.
TPCDS_TABLES: dict[str, str] = {
    "call_center": """cc_call_center_sk:int cc_call_center_id:char(16) cc_rec_start_date:date
        cc_rec_end_date:date cc_closed_date_sk:int cc_open_date_sk:int cc_name:varchar(50)
        cc_class:varchar(50) cc_employees:int cc_sq_ft:int cc_hours:char(20) cc_manager:varchar(40)
        cc_mkt_id:int cc_mkt_class:char(50) cc_mkt_desc:varchar(100) cc_market_manager:varchar(40)
        cc_division:int cc_division_name:varchar(50) cc_company:int cc_company_name:char(50)
        cc_street_number:char(10) cc_street_name:varchar(60) cc_street_type:char(15)
        cc_suite_number:char(10) cc_city:varchar(60) cc_county:varchar(30) cc_state:char(2)
        cc_zip:char(10) cc_country:varchar(20) cc_gmt_offset:decimal(5,2) cc_tax_percentage:decimal(5,2)""",
    "catalog_page": """cp_catalog_page_sk:int cp_catalog_page_id:char(16) cp_start_date_sk:int
        cp_end_date_sk:int cp_department:varchar(50) cp_catalog_number:int cp_catalog_page_number:int
        cp_description:varchar(100) cp_type:varchar(100)""",
    "catalog_returns": """cr_returned_date_sk:int cr_returned_time_sk:int cr_item_sk:int
        cr_refunded_customer_sk:int cr_refunded_cdemo_sk:int cr_refunded_hdemo_sk:int
        cr_refunded_addr_sk:int cr_returning_customer_sk:int cr_returning_cdemo_sk:int
        cr_returning_hdemo_sk:int cr_returning_addr_sk:int cr_call_center_sk:int cr_catalog_page_sk:int
        cr_ship_mode_sk:int cr_warehouse_sk:int cr_reason_sk:int cr_order_number:bigint
        cr_return_quantity:int cr_return_amount:decimal(7,2) cr_return_tax:decimal(7,2)
        cr_return_amt_inc_tax:decimal(7,2) cr_fee:decimal(7,2) cr_return_ship_cost:decimal(7,2)
        cr_refunded_cash:decimal(7,2) cr_reversed_charge:decimal(7,2) cr_store_credit:decimal(7,2)
        cr_net_loss:decimal(7,2)""",
    "catalog_sales": """cs_sold_date_sk:int cs_sold_time_sk:int cs_ship_date_sk:int
        cs_bill_customer_sk:int cs_bill_cdemo_sk:int cs_bill_hdemo_sk:int cs_bill_addr_sk:int
        cs_ship_customer_sk:int cs_ship_cdemo_sk:int cs_ship_hdemo_sk:int cs_ship_addr_sk:int
        cs_call_center_sk:int cs_catalog_page_sk:int cs_ship_mode_sk:int cs_warehouse_sk:int
        cs_item_sk:int cs_promo_sk:int cs_order_number:bigint cs_quantity:int
        cs_wholesale_cost:decimal(7,2) cs_list_price:decimal(7,2) cs_sales_price:decimal(7,2)
        cs_ext_discount_amt:decimal(7,2) cs_ext_sales_price:decimal(7,2)
        cs_ext_wholesale_cost:decimal(7,2) cs_ext_list_price:decimal(7,2) cs_ext_tax:decimal(7,2)
        cs_coupon_amt:decimal(7,2) cs_ext_ship_cost:decimal(7,2) cs_net_paid:decimal(7,2)
        cs_net_paid_inc_tax:decimal(7,2) cs_net_paid_inc_ship:decimal(7,2)
        cs_net_paid_inc_ship_tax:decimal(7,2) cs_net_profit:decimal(7,2)""",
    "customer": """c_customer_sk:int c_customer_id:char(16) c_current_cdemo_sk:int c_current_hdemo_sk:int
        c_current_addr_sk:int c_first_shipto_date_sk:int c_first_sales_date_sk:int c_salutation:char(10)
        c_first_name:char(20) c_last_name:char(30) c_preferred_cust_flag:char(1) c_birth_day:int
        c_birth_month:int c_birth_year:int c_birth_country:varchar(20) c_login:char(13)
        c_email_address:char(50) c_last_review_date_sk:int""",
    "customer_address": """ca_address_sk:int ca_address_id:char(16) ca_street_number:char(10)
        ca_street_name:varchar(60) ca_street_type:char(15) ca_suite_number:char(10) ca_city:varchar(60)
        ca_county:varchar(30) ca_state:char(2) ca_zip:char(10) ca_country:varchar(20)
        ca_gmt_offset:decimal(5,2) ca_location_type:char(20)""",
    "customer_demographics": """cd_demo_sk:int cd_gender:char(1) cd_marital_status:char(1)
        cd_education_status:char(20) cd_purchase_estimate:int cd_credit_rating:char(10) cd_dep_count:int
        cd_dep_employed_count:int cd_dep_college_count:int""",
    "date_dim": """d_date_sk:int d_date_id:char(16) d_date:date d_month_seq:int d_week_seq:int
        d_quarter_seq:int d_year:int d_dow:int d_moy:int d_dom:int d_qoy:int d_fy_year:int
        d_fy_quarter_seq:int d_fy_week_seq:int d_day_name:char(9) d_quarter_name:char(6) d_holiday:char(1)
        d_weekend:char(1) d_following_holiday:char(1) d_first_dom:int d_last_dom:int d_same_day_ly:int
        d_same_day_lq:int d_current_day:char(1) d_current_week:char(1) d_current_month:char(1)
        d_current_quarter:char(1) d_current_year:char(1)""",
    "household_demographics": """hd_demo_sk:int hd_income_band_sk:int hd_buy_potential:char(15)
        hd_dep_count:int hd_vehicle_count:int""",
    "income_band": "ib_income_band_sk:int ib_lower_bound:int ib_upper_bound:int",
    "inventory": "inv_date_sk:int inv_item_sk:int inv_warehouse_sk:int inv_quantity_on_hand:int",
    "item": """i_item_sk:int i_item_id:char(16) i_rec_start_date:date i_rec_end_date:date
        i_item_desc:varchar(200) i_current_price:decimal(7,2) i_wholesale_cost:decimal(7,2) i_brand_id:int
        i_brand:char(50) i_class_id:int i_class:char(50) i_category_id:int i_category:char(50)
        i_manufact_id:int i_manufact:char(50) i_size:char(20) i_formulation:char(20) i_color:char(20)
        i_units:char(10) i_container:char(10) i_manager_id:int i_product_name:char(50)""",
    "promotion": """p_promo_sk:int p_promo_id:char(16) p_start_date_sk:int p_end_date_sk:int p_item_sk:int
        p_cost:decimal(15,2) p_response_target:int p_promo_name:char(50) p_channel_dmail:char(1)
        p_channel_email:char(1) p_channel_catalog:char(1) p_channel_tv:char(1) p_channel_radio:char(1)
        p_channel_press:char(1) p_channel_event:char(1) p_channel_demo:char(1)
        p_channel_details:varchar(100) p_purpose:char(15) p_discount_active:char(1)""",
    "reason": "r_reason_sk:int r_reason_id:char(16) r_reason_desc:char(100)",
    "ship_mode": """sm_ship_mode_sk:int sm_ship_mode_id:char(16) sm_type:char(30) sm_code:char(10)
        sm_carrier:char(20) sm_contract:char(20)""",
    "store": """s_store_sk:int s_store_id:char(16) s_rec_start_date:date s_rec_end_date:date
        s_closed_date_sk:int s_store_name:varchar(50) s_number_employees:int s_floor_space:int
        s_hours:char(20) s_manager:varchar(40) s_market_id:int s_geography_class:varchar(100)
        s_market_desc:varchar(100) s_market_manager:varchar(40) s_division_id:int
        s_division_name:varchar(50) s_company_id:int s_company_name:varchar(50) s_street_number:varchar(10)
        s_street_name:varchar(60) s_street_type:char(15) s_suite_number:char(10) s_city:varchar(60)
        s_county:varchar(30) s_state:char(2) s_zip:char(10) s_country:varchar(20)
        s_gmt_offset:decimal(5,2) s_tax_precentage:decimal(5,2)""",
    "store_returns": """sr_returned_date_sk:int sr_return_time_sk:int sr_item_sk:int sr_customer_sk:int
        sr_cdemo_sk:int sr_hdemo_sk:int sr_addr_sk:int sr_store_sk:int sr_reason_sk:int
        sr_ticket_number:bigint sr_return_quantity:int sr_return_amt:decimal(7,2)
        sr_return_tax:decimal(7,2) sr_return_amt_inc_tax:decimal(7,2) sr_fee:decimal(7,2)
        sr_return_ship_cost:decimal(7,2) sr_refunded_cash:decimal(7,2) sr_reversed_charge:decimal(7,2)
        sr_store_credit:decimal(7,2) sr_net_loss:decimal(7,2)""",
    "store_sales": """ss_sold_date_sk:int ss_sold_time_sk:int ss_item_sk:int ss_customer_sk:int
        ss_cdemo_sk:int ss_hdemo_sk:int ss_addr_sk:int ss_store_sk:int ss_promo_sk:int
        ss_ticket_number:bigint ss_quantity:int ss_wholesale_cost:decimal(7,2) ss_list_price:decimal(7,2)
        ss_sales_price:decimal(7,2) ss_ext_discount_amt:decimal(7,2) ss_ext_sales_price:decimal(7,2)
        ss_ext_wholesale_cost:decimal(7,2) ss_ext_list_price:decimal(7,2) ss_ext_tax:decimal(7,2)
        ss_coupon_amt:decimal(7,2) ss_net_paid:decimal(7,2) ss_net_paid_inc_tax:decimal(7,2)
        ss_net_profit:decimal(7,2)""",
    "time_dim": """t_time_sk:int t_time_id:char(16) t_time:int t_hour:int t_minute:int t_second:int
        t_am_pm:char(2) t_shift:char(20) t_sub_shift:char(20) t_meal_time:char(20)""",
    "warehouse": """w_warehouse_sk:int w_warehouse_id:char(16) w_warehouse_name:varchar(20)
        w_warehouse_sq_ft:int w_street_number:char(10) w_street_name:varchar(60) w_street_type:char(15)
        w_suite_number:char(10) w_city:varchar(60) w_county:varchar(30) w_state:char(2) w_zip:char(10)
        w_country:varchar(20) w_gmt_offset:decimal(5,2)""",
    "web_page": """wp_web_page_sk:int wp_web_page_id:char(16) wp_rec_start_date:date wp_rec_end_date:date
        wp_creation_date_sk:int wp_access_date_sk:int wp_autogen_flag:char(1) wp_customer_sk:int
        wp_url:varchar(100) wp_type:char(50) wp_char_count:int wp_link_count:int wp_image_count:int
        wp_max_ad_count:int""",
    "web_returns": """wr_returned_date_sk:int wr_returned_time_sk:int wr_item_sk:int
        wr_refunded_customer_sk:int wr_refunded_cdemo_sk:int wr_refunded_hdemo_sk:int
        wr_refunded_addr_sk:int wr_returning_customer_sk:int wr_returning_cdemo_sk:int
        wr_returning_hdemo_sk:int wr_returning_addr_sk:int wr_web_page_sk:int wr_reason_sk:int
        wr_order_number:bigint wr_return_quantity:int wr_return_amt:decimal(7,2) wr_return_tax:decimal(7,2)
        wr_return_amt_inc_tax:decimal(7,2) wr_fee:decimal(7,2) wr_return_ship_cost:decimal(7,2)
        wr_refunded_cash:decimal(7,2) wr_reversed_charge:decimal(7,2) wr_account_credit:decimal(7,2)
        wr_net_loss:decimal(7,2)""",
    "web_sales": """ws_sold_date_sk:int ws_sold_time_sk:int ws_ship_date_sk:int ws_item_sk:int
        ws_bill_customer_sk:int ws_bill_cdemo_sk:int ws_bill_hdemo_sk:int ws_bill_addr_sk:int
        ws_ship_customer_sk:int ws_ship_cdemo_sk:int ws_ship_hdemo_sk:int ws_ship_addr_sk:int
        ws_web_page_sk:int ws_web_site_sk:int ws_ship_mode_sk:int ws_warehouse_sk:int ws_promo_sk:int
        ws_order_number:bigint ws_quantity:int ws_wholesale_cost:decimal(7,2) ws_list_price:decimal(7,2)
        ws_sales_price:decimal(7,2) ws_ext_discount_amt:decimal(7,2) ws_ext_sales_price:decimal(7,2)
        ws_ext_wholesale_cost:decimal(7,2) ws_ext_list_price:decimal(7,2) ws_ext_tax:decimal(7,2)
        ws_coupon_amt:decimal(7,2) ws_ext_ship_cost:decimal(7,2) ws_net_paid:decimal(7,2)
        ws_net_paid_inc_tax:decimal(7,2) ws_net_paid_inc_ship:decimal(7,2)
        ws_net_paid_inc_ship_tax:decimal(7,2) ws_net_profit:decimal(7,2)""",
    "web_site": """web_site_sk:int web_site_id:char(16) web_rec_start_date:date web_rec_end_date:date
        web_name:varchar(50) web_open_date_sk:int web_close_date_sk:int web_class:varchar(50)
        web_manager:varchar(40) web_mkt_id:int web_mkt_class:varchar(50) web_mkt_desc:varchar(100)
        web_market_manager:varchar(40) web_company_id:int web_company_name:char(50)
        web_street_number:char(10) web_street_name:varchar(60) web_street_type:char(15)
        web_suite_number:char(10) web_city:varchar(60) web_county:varchar(30) web_state:char(2)
        web_zip:char(10) web_country:varchar(20) web_gmt_offset:decimal(5,2)
        web_tax_percentage:decimal(5,2)""",
}

#: Fact tables and the date key they are partitioned by (moved from the columns to the partition keys).
TPCDS_PARTITION_KEYS = {
    "catalog_returns": "cr_returned_date_sk",
    "catalog_sales": "cs_sold_date_sk",
    "inventory": "inv_date_sk",
    "store_returns": "sr_returned_date_sk",
    "store_sales": "ss_sold_date_sk",
    "web_returns": "wr_returned_date_sk",
    "web_sales": "ws_sold_date_sk",
}

MARKETING_TABLES: dict[str, tuple[str, str]] = {
    # name: (columns, partition keys)
    "campaigns": (
        "campaign_id:string campaign_name:string channel:string start_date:date end_date:date "
        "budget_usd:decimal(12,2) owner_email:string",
        "",
    ),
    "campaign_events": (
        "event_id:string campaign_id:string customer_sk:int event_type:string event_ts:timestamp "
        "attributes:map<string,string> cost_usd:decimal(10,4)",
        "dt:string",
    ),
}

_PARQUET = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
}

MONTHLY_REVENUE_SQL = (
    "SELECT d.d_year, d.d_moy, s.s_store_name, SUM(ss.ss_net_paid) AS revenue\n"
    "FROM tpcds_sf10.store_sales ss\n"
    "JOIN tpcds_sf10.date_dim d ON ss.ss_sold_date_sk = d.d_date_sk\n"
    "JOIN tpcds_sf10.store s ON ss.ss_store_sk = s.s_store_sk\n"
    "GROUP BY d.d_year, d.d_moy, s.s_store_name"
)
ACTIVE_CUSTOMERS_SQL = (
    "SELECT c.c_customer_sk, c.c_email_address, max(e.event_ts) AS last_event_ts\n"
    "FROM marketing.campaign_events e JOIN tpcds_sf10.customer c ON e.customer_sk = c.c_customer_sk\n"
    "WHERE e.dt >= date_format(date_sub(current_date, 90), 'yyyy-MM-dd')\n"
    "GROUP BY c.c_customer_sk, c.c_email_address"
)

# Query history: TPC-DS-style queries with literals (the writer stage masks them), a little DDL.
_QUERY_TEMPLATES = (
    "SELECT dt.d_year, item.i_brand_id AS brand_id, item.i_brand AS brand, SUM(ss_ext_sales_price) AS "
    "sum_agg FROM {db}.date_dim dt JOIN {db}.store_sales ON dt.d_date_sk = store_sales.ss_sold_date_sk "
    "JOIN {db}.item ON store_sales.ss_item_sk = item.i_item_sk WHERE item.i_manufact_id = {n} AND "
    "dt.d_moy = 11 GROUP BY dt.d_year, item.i_brand, item.i_brand_id ORDER BY dt.d_year, sum_agg DESC "
    "LIMIT 100",
    "SELECT i_item_id, AVG(ss_quantity) AS agg1, AVG(ss_list_price) AS agg2 FROM {db}.store_sales JOIN "
    "{db}.customer_demographics ON ss_cdemo_sk = cd_demo_sk JOIN {db}.item ON ss_item_sk = i_item_sk "
    "WHERE cd_gender = 'M' AND cd_marital_status = 'S' AND cd_education_status = 'College' "
    "GROUP BY i_item_id ORDER BY i_item_id LIMIT {n}",
    "SELECT c_last_name, c_first_name, c_email_address FROM {db}.customer WHERE c_birth_year = {year} "
    "AND c_birth_country = 'GERMANY' AND c_email_address LIKE '%@example.com'",
    "SELECT ca_state, COUNT(*) AS cnt FROM {db}.customer_address WHERE ca_gmt_offset = -5.00 "
    "GROUP BY ca_state HAVING COUNT(*) >= {n} ORDER BY cnt DESC",
    "SELECT w_warehouse_name, SUM(inv_quantity_on_hand) FROM {db}.inventory JOIN {db}.warehouse ON "
    "inv_warehouse_sk = w_warehouse_sk WHERE inv_date_sk BETWEEN 2451000 AND {date_sk} GROUP BY "
    "w_warehouse_name",
    "SELECT * FROM marketing.monthly_store_revenue WHERE d_year = {year} AND revenue > {n}000.50",
    "SELECT campaign_id, COUNT(DISTINCT customer_sk) FROM marketing.campaign_events WHERE dt = "
    "'2026-11-{day:02d}' AND event_type IN ('click', 'purchase') GROUP BY campaign_id",
    "MSCK REPAIR TABLE {db}.store_sales",
    "ALTER TABLE marketing.campaign_events ADD IF NOT EXISTS PARTITION (dt = '2026-11-{day:02d}') "
    "LOCATION 's3://analytics-warehouse/marketing/campaign_events/dt=2026-11-{day:02d}/'",
)


# Statements that move data between tables (the rest of the history only reads): lineage for the demo.
LINEAGE_QUERIES = (
    "CREATE TABLE marketing.campaign_customer_revenue WITH (format = 'PARQUET') AS "
    "SELECT e.campaign_id, c.c_customer_sk, c.c_email_address, SUM(ss.ss_net_paid) AS revenue "
    "FROM marketing.campaign_events e JOIN tpcds_sf10.customer c ON e.customer_sk = c.c_customer_sk "
    "JOIN tpcds_sf10.store_sales ss ON ss.ss_customer_sk = c.c_customer_sk "
    "WHERE e.event_type = 'purchase' GROUP BY 1, 2, 3",
    "INSERT INTO marketing.campaigns SELECT campaign_id, campaign_name, 'web' AS channel, start_date, end_date, "
    "budget_usd, owner_email FROM marketing.campaigns WHERE end_date < DATE '2026-01-01'",
    "CREATE OR REPLACE VIEW marketing.email_campaigns AS SELECT campaign_id, campaign_name, budget_usd "
    "FROM marketing.campaigns WHERE channel = 'email'",
)


def parse_columns(spec: str) -> list[tuple[str, str]]:
    """``"a:int b:decimal(7,2)"`` → ``[("a", "int"), ("b", "decimal(7,2)")]``."""
    return [tuple(token.split(":", 1)) for token in spec.split()]  # type: ignore[misc]


def tpcds_table(name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(columns, partition keys) of a TPC-DS table as laid out here: a fact table's date key is its
    partition key and not one of its columns."""
    columns = parse_columns(TPCDS_TABLES[name])
    key = TPCDS_PARTITION_KEYS.get(name)
    if key is None:
        return columns, []
    return [c for c in columns if c[0] != key], [c for c in columns if c[0] == key]


def presto_view_text(sql: str, catalog: str, schema: str, columns: list[tuple[str, str]]) -> str:
    """``ViewOriginalText`` as Athena writes it for ``CREATE VIEW``: ``/* Presto View: <base64 JSON> */``.

    The JSON is Trino's view definition (``originalSql``, ``catalog``, ``schema``, ``columns``); format
    of the Hive connector's ``ViewReaderUtil`` (trino-hive, ``PRESTO_VIEW_PREFIX``/``PRESTO_VIEW_SUFFIX``).
    """
    definition = {
        "originalSql": sql,
        "catalog": catalog,
        "schema": schema,
        "columns": [{"name": n, "type": t} for n, t in columns],
    }
    encoded = base64.b64encode(json.dumps(definition).encode()).decode()
    return f"/* Presto View: {encoded} */"


def _clients(endpoint_url: str, region: str) -> dict[str, Any]:
    return {
        name: boto3.client(
            name,
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        )
        for name in ("s3", "glue", "athena")
    }


def _create_bucket(s3: Any, bucket: str, region: str) -> None:
    if region == "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def _storage(location: str, columns: list[tuple[str, str]]) -> dict[str, Any]:
    return {"Columns": [{"Name": n, "Type": t} for n, t in columns], "Location": location, **_PARQUET}


def _create_tables(glue: Any) -> dict[str, SeededTable]:
    tables: dict[str, SeededTable] = {}
    for database in TPCDS_DATABASES:
        scale = database.removeprefix("tpcds_")
        glue.create_database(
            DatabaseInput={
                "Name": database,
                "Description": f"TPC-DS at scale factor {scale.removeprefix('sf')} (Parquet)",
                "LocationUri": f"s3://{WAREHOUSE_BUCKET}/tpcds/{scale}/",
            }
        )
        for name in TPCDS_TABLES:
            columns, keys = tpcds_table(name)
            glue.create_table(
                DatabaseName=database,
                TableInput={
                    "Name": name,
                    "TableType": "EXTERNAL_TABLE",
                    "Owner": "hadoop",
                    "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                    "StorageDescriptor": _storage(f"s3://{WAREHOUSE_BUCKET}/tpcds/{scale}/{name}/", columns),
                    "PartitionKeys": [{"Name": n, "Type": t} for n, t in keys],
                },
            )
            tables[f"{database}.{name}"] = SeededTable("EXTERNAL_TABLE", columns, keys)

    glue.create_database(
        DatabaseInput={
            "Name": MARKETING_DATABASE,
            "Description": "Campaigns and their events, owned by the marketing analytics team",
            "LocationUri": f"s3://{WAREHOUSE_BUCKET}/marketing/",
        }
    )
    for name, (column_spec, key_spec) in MARKETING_TABLES.items():
        columns, keys = parse_columns(column_spec), parse_columns(key_spec)
        glue.create_table(
            DatabaseName=MARKETING_DATABASE,
            TableInput={
                "Name": name,
                "Description": f"marketing.{name}",
                "TableType": "EXTERNAL_TABLE",
                "Owner": "marketing-etl",
                "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                "StorageDescriptor": {
                    **_storage(f"s3://{WAREHOUSE_BUCKET}/marketing/{name}/", columns),
                    "Columns": [
                        {"Name": n, "Type": t, **({"Comment": "PII"} if n == "owner_email" else {})}
                        for n, t in columns
                    ],
                },
                "PartitionKeys": [{"Name": n, "Type": t} for n, t in keys],
            },
        )
        tables[f"{MARKETING_DATABASE}.{name}"] = SeededTable("EXTERNAL_TABLE", columns, keys)
    return tables


def _create_views(glue: Any) -> dict[str, SeededView]:
    views = {
        # Athena's own view (CREATE VIEW in Athena): the SQL is inside the base64 blob.
        "monthly_store_revenue": (
            MONTHLY_REVENUE_SQL,
            [
                ("d_year", "int"),
                ("d_moy", "int"),
                ("s_store_name", "varchar(50)"),
                ("revenue", "decimal(17,2)"),
            ],
            "athena",
        ),
        # A view created by Spark/Hive: plain SQL in ViewOriginalText.
        "active_customers": (
            ACTIVE_CUSTOMERS_SQL,
            [("c_customer_sk", "int"), ("c_email_address", "char(50)"), ("last_event_ts", "timestamp")],
            "hive",
        ),
    }
    created: dict[str, SeededView] = {}
    for name, (sql, columns, dialect) in views.items():
        if dialect == "athena":
            original = presto_view_text(sql, "awsdatacatalog", MARKETING_DATABASE, columns)
            expanded = "/* Presto View */"
            parameters = {"presto_view": "true", "comment": "Presto View"}
        else:
            original, expanded, parameters = sql, sql, {}
        glue.create_table(
            DatabaseName=MARKETING_DATABASE,
            TableInput={
                "Name": name,
                "TableType": "VIRTUAL_VIEW",
                "Owner": "marketing-etl",
                "Parameters": parameters,
                "ViewOriginalText": original,
                "ViewExpandedText": expanded,
                "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns]},
                "PartitionKeys": [],
            },
        )
        created[f"{MARKETING_DATABASE}.{name}"] = SeededView(sql, dialect, columns)
    return created


def _run_history(athena: Any) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for workgroup, count in QUERIES_PER_WORKGROUP.items():
        ids[workgroup] = []
        for i in range(count):
            template = _QUERY_TEMPLATES[i % len(_QUERY_TEMPLATES)]
            database = TPCDS_DATABASES[i % 2]
            sql = template.format(
                db=database, n=i + 1, year=1950 + i, day=1 + i % 28, date_sk=2451000 + 30 * i
            )
            response = athena.start_query_execution(
                QueryString=sql,
                QueryExecutionContext={"Catalog": "AwsDataCatalog", "Database": database},
                WorkGroup=workgroup,
                # the analysts workgroup enforces its own result location (as configured below)
                **(
                    {}
                    if workgroup == "analysts"
                    else {"ResultConfiguration": {"OutputLocation": OUTPUT_LOCATION}}
                ),
            )
            ids[workgroup].append(response["QueryExecutionId"])
    for sql in LINEAGE_QUERIES:
        ids["primary"].append(
            athena.start_query_execution(
                QueryString=sql,
                QueryExecutionContext={"Catalog": "AwsDataCatalog", "Database": MARKETING_DATABASE},
                WorkGroup="primary",
                ResultConfiguration={"OutputLocation": OUTPUT_LOCATION},
            )["QueryExecutionId"]
        )
    return ids


def seed_athena(endpoint_url: str, region: str) -> SeededAthena:
    """Create this estate on the moto server at ``endpoint_url``:

    - Glue databases ``tpcds_sf1`` and ``tpcds_sf10``, each with the 24 tables of TPC-DS (425 columns;
      the seven fact tables partitioned by their date key, as the usual Spark/Hive TPC-DS layout does),
      and ``marketing`` with two tables of its own (one partitioned by ``dt``) and two views: one created
      the way Athena stores views (``/* Presto View: <base64 JSON> */``), one a Hive/Spark view (SQL);
    - the workgroups ``primary`` (moto creates it) and ``analysts``, and the query-results bucket;
    - a federated data catalog ``crm_postgres`` (type LAMBDA) with a database ``public``;
    - query history: ``QUERIES_PER_WORKGROUP`` ``start_query_execution`` calls per workgroup, then the
      ``LINEAGE_QUERIES`` (a CTAS, an INSERT, a CREATE VIEW) in ``primary``.

    moto's behaviour (5.2) that the tests and the demo work with (``devstack.moto_gaps`` answers
    ``ListQueryExecutions``, ``BatchGetQueryExecution``, ``ListDataCatalogs`` and ``GetWorkGroup`` as AWS
    does):

    - Athena "runs" nothing: a started query is SUCCEEDED (by default) at its first
      ``get_query_execution``; its ``SubmissionDateTime`` and ``CompletionDateTime`` are both the instant
      it was started. Its results are empty unless queued beforehand with ``queue_query_results`` (moto's
      ``/moto-api/static/athena/query-results``), which hands each queued result to the next query.
    - Executions started without ``WorkGroup`` belong to no workgroup (AWS puts them in ``primary``): the
      seed always passes one. ``list_table_metadata`` does not exist.
    - Databases of a non-Glue catalog exist only in Athena's own model: the seed creates
      ``crm_postgres.public`` with a ``CREATE DATABASE`` query (moto parses that DDL; on AWS a federated
      catalog's databases are the source's schemas and cannot be created through Athena).

    Call once per (fresh or reset) server: a second call fails on the existing bucket and databases.
    """
    clients = _clients(endpoint_url, region)
    s3, glue, athena = clients["s3"], clients["glue"], clients["athena"]

    _create_bucket(s3, RESULTS_BUCKET, region)
    _create_bucket(s3, WAREHOUSE_BUCKET, region)
    athena.create_work_group(
        Name="analysts",
        Description="Ad-hoc analysis by the analytics team (10 GB per query)",
        Configuration={
            "ResultConfiguration": {"OutputLocation": f"s3://{RESULTS_BUCKET}/analysts/"},
            "EnforceWorkGroupConfiguration": True,
            "PublishCloudWatchMetricsEnabled": True,
            "BytesScannedCutoffPerQuery": 10 * 1024**3,
            "EngineVersion": {"SelectedEngineVersion": "Athena engine version 3"},
        },
        Tags=[{"Key": "team", "Value": "analytics"}],
    )
    athena.create_data_catalog(
        Name=FEDERATED_CATALOG,
        Type="LAMBDA",
        Description="CRM PostgreSQL through the Athena PostgreSQL connector",
        Parameters={"function": f"arn:aws:lambda:{region}:{MOTO_ACCOUNT_ID}:function:athena-postgres-crm"},
    )
    create_database = athena.start_query_execution(  # moto-only: see the module docstring
        QueryString=f"CREATE DATABASE {FEDERATED_DATABASE}",
        QueryExecutionContext={"Catalog": FEDERATED_CATALOG},
        ResultConfiguration={"OutputLocation": OUTPUT_LOCATION},
        WorkGroup="primary",
    )["QueryExecutionId"]

    tables = _create_tables(glue)
    views = _create_views(glue)
    history = _run_history(athena)
    history["primary"].insert(0, create_database)
    column_count = sum(len(t.columns) + len(t.partition_keys) for t in tables.values()) + sum(
        len(v.columns) for v in views.values()
    )
    return SeededAthena(
        region=region,
        results_bucket=RESULTS_BUCKET,
        output_location=OUTPUT_LOCATION,
        databases=[*TPCDS_DATABASES, MARKETING_DATABASE],
        tables=tables,
        views=views,
        column_count=column_count,
        workgroups=list(WORKGROUPS),
        query_execution_ids=history,
        federated_catalog=FEDERATED_CATALOG,
        federated_databases=[FEDERATED_DATABASE],
    )


# --- query results for moto ----------------------------------------------------------------------


def queue_query_results(
    endpoint_url: str, region: str, results: list[tuple[list[str], list[tuple[Any, ...]]]]
) -> None:
    """Queue results for the next queries started on moto's server (one per query, in order).

    Each result is ``(column names, rows)``; values are sent as Athena's ``VarCharValue`` strings (None =
    SQL NULL). As on AWS, a SELECT's first row holds the column names. Uses moto's
    ``POST /moto-api/static/athena/query-results`` (moto's docs, "Athena": get_query_results).
    """
    payload = {
        "account_id": MOTO_ACCOUNT_ID,
        "region": region,
        "results": [
            {
                "rows": [
                    {"Data": [{"VarCharValue": n} for n in names]},
                    *({"Data": [{} if v is None else {"VarCharValue": str(v)} for v in row]} for row in rows),
                ],
                "column_info": [
                    {
                        "CatalogName": "hive",
                        "SchemaName": "",
                        "TableName": "",
                        "Name": n,
                        "Label": n,
                        "Type": "varchar",
                        "Precision": 0,
                        "Scale": 0,
                        "Nullable": "UNKNOWN",
                        "CaseSensitive": True,
                    }
                    for n in names
                ],
            }
            for names, rows in results
        ],
    }
    response = httpx.post(f"{endpoint_url}/moto-api/static/athena/query-results", json=payload, timeout=10)
    response.raise_for_status()


def information_schema_tables(seeded: SeededAthena) -> tuple[list[str], list[tuple[Any, ...]]]:
    """What ``SELECT table_schema, table_name, table_type FROM information_schema.tables`` returns on AWS
    for the seeded Glue catalog (Athena reports Glue tables as ``BASE TABLE`` and views as ``VIEW``)."""
    rows = [(*name.split("."), "BASE TABLE") for name in seeded.tables]
    rows += [(*name.split("."), "VIEW") for name in seeded.views]
    return ["table_schema", "table_name", "table_type"], sorted(rows)


# --- a large synthetic catalog (bench/athena_catalog.py) -----------------------------------------


def seed_large_glue_catalog(
    endpoint_url: str,
    region: str,
    *,
    databases: int,
    tables: int,
    columns_per_table: int,
    queries: int,
    threads: int = 4,
) -> SeededGlueCatalog:
    """Seed a fresh moto server with ``tables`` Glue tables of ``columns_per_table`` columns each (partition
    keys included), spread round-robin over ``databases`` databases ``bench_00``…; every 50th table is an
    Athena view, every 4th other table is partitioned by ``dt``. Also the results and warehouse buckets, the
    workgroup ``analysts`` and ``queries`` executions alternating between ``primary`` and ``analysts``.
    Calls run on ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.config import Config

    config = Config(max_pool_connections=max(10, threads), retries={"mode": "standard", "max_attempts": 8})
    s3, glue, athena = (
        boto3.client(
            name,
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            config=config,
        )
        for name in ("s3", "glue", "athena")
    )
    _create_bucket(s3, RESULTS_BUCKET, region)
    _create_bucket(s3, WAREHOUSE_BUCKET, region)
    athena.create_work_group(
        Name="analysts",
        Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{RESULTS_BUCKET}/analysts/"}},
    )
    names = [f"bench_{d:02d}" for d in range(databases)]
    for name in names:
        glue.create_database(DatabaseInput={"Name": name, "LocationUri": f"s3://{WAREHOUSE_BUCKET}/{name}/"})
    types = ("int", "bigint", "string", "decimal(12,2)", "date", "timestamp", "double", "varchar(64)")

    def create(i: int) -> tuple[str, str, str]:
        database, name = names[i % databases], f"t_{i:06d}"
        columns = [(f"c_{c:03d}", types[c % len(types)]) for c in range(columns_per_table)]
        if i % 50 == 49:
            sql = f"SELECT * FROM {database}.t_{i - 1:06d} WHERE c_000 > 0"
            glue.create_table(
                DatabaseName=database,
                TableInput={
                    "Name": name,
                    "TableType": "VIRTUAL_VIEW",
                    "Parameters": {"presto_view": "true", "comment": "Presto View"},
                    "ViewOriginalText": presto_view_text(sql, "awsdatacatalog", database, columns),
                    "ViewExpandedText": "/* Presto View */",
                    "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns]},
                },
            )
            return database, name, "VIEW"
        keys = [("dt", "string")] if i % 4 == 0 and columns_per_table > 1 else []
        glue.create_table(
            DatabaseName=database,
            TableInput={
                "Name": name,
                "TableType": "EXTERNAL_TABLE",
                "Owner": "hadoop",
                "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                "StorageDescriptor": _storage(
                    f"s3://{WAREHOUSE_BUCKET}/{database}/{name}/", columns[: len(columns) - len(keys)]
                ),
                "PartitionKeys": [{"Name": n, "Type": t} for n, t in keys],
            },
        )
        return database, name, "BASE TABLE"

    def start(i: int) -> str:
        workgroup = WORKGROUPS[i % 2]
        sql = _QUERY_TEMPLATES[i % len(_QUERY_TEMPLATES)].format(
            db=names[i % databases], n=i + 1, year=1950 + i % 50, day=1 + i % 28, date_sk=2451000 + i
        )
        return athena.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Catalog": "AwsDataCatalog", "Database": names[i % databases]},
            WorkGroup=workgroup,
            ResultConfiguration={"OutputLocation": OUTPUT_LOCATION},
        )["QueryExecutionId"]

    with ThreadPoolExecutor(threads) as pool:
        created = list(pool.map(create, range(tables)))
        ids = list(pool.map(start, range(queries)))
    return SeededGlueCatalog(
        output_location=OUTPUT_LOCATION,
        workgroups=list(WORKGROUPS),
        tables=created,
        columns=tables * columns_per_table,
        views=sum(kind == "VIEW" for *_, kind in created),
        query_execution_ids=ids,
    )
