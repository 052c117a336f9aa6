"""blocks/crm_export"""
