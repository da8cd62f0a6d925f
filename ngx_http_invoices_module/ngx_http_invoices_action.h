
/*
 * POST /admin/api/invoices/{id}/{action} and DELETE .../{id}: see
 * ngx_http_invoices_action.c.
 */


#ifndef _NGX_HTTP_INVOICES_ACTION_H_INCLUDED_
#define _NGX_HTTP_INVOICES_ACTION_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"


/* the action a name (the route's last part) names, or -1 */
ngx_int_t ngx_http_invoices_action_find(ngx_str_t *name);

/* action: from ngx_http_invoices_action_find, or the DELETE's */
ngx_int_t ngx_http_invoices_action(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id, ngx_int_t action);

/* the DELETE's action */
#define NGX_HTTP_INVOICES_ACTION_DELETE  5


#endif /* _NGX_HTTP_INVOICES_ACTION_H_INCLUDED_ */
