"""flows/crm_export"""
